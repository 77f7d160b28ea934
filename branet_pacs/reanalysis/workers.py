"""Worker processes for re-analysis: each loads the models once and analyses spooled studies, file by file.

Processes are started with the `spawn` method (no inherited torch state or threads) and with SIGINT ignored, so
Ctrl-C in the terminal reaches only the driver, which decides what to do. A worker whose driver disappears
(killed) notices within a second of its current study and exits. Studies travel as file paths, results as
small `StudyReport` values plus output files: memory stays bounded whatever the study size.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import time
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

from branet_pacs.config import Config
from branet_pacs.types import Status, StudyState, study_verdict

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5


@dataclass(frozen=True)
class StudyJob:
    study_uid: str
    files: tuple[Path, ...]
    out_dir: Path


@dataclass(frozen=True)
class StudyReport:
    """What a worker says about one study (plain values; outputs are files in the job's out_dir)."""

    study_uid: str
    state: StudyState                             # the study verdict, or FAILED when the worker could not finish
    reason: str
    instances: int = 0
    findings: int = 0
    outputs: tuple[Path, ...] = ()
    seconds: float = 0.0
    worker: int = 0
    errors: tuple[tuple[str, str], ...] = field(default=())   # (SOP Instance UID, reason) of failed instances
    node: str = ""                                # Ray node ID (ray engine)
    attempts: int = 1                             # analyses started: more than 1 when a worker died on it
    retried: tuple[str, ...] = ()                 # why the earlier attempts ended


def run_job(job: StudyJob, analyzer) -> StudyReport:
    """Analyse the study's files one at a time (the same unit of work as `branet analyze` and the Orthanc worker)
    and write their outputs under the job's out_dir; never raises for bad input."""
    from branet_pacs.outputs import write_outputs

    start = time.perf_counter()
    summaries, paths, errors = [], [], []
    for path in job.files:
        result = analyzer.analyze_instance(path, name=f"instance {path.name}")
        summary = result.summary()
        summaries.append(summary)
        if summary.status is Status.ERROR:
            errors.append((summary.sop_instance_uid or path.stem, summary.reason))
        paths.extend(out.path for out in write_outputs(result, job.out_dir))
    verdict = study_verdict(summaries)
    return StudyReport(job.study_uid, verdict.state, verdict.reason, instances=len(summaries),
                       findings=sum(s.findings for s in summaries), outputs=tuple(paths),
                       seconds=time.perf_counter() - start, worker=os.getpid(), errors=tuple(errors))


def _worker_main(config: Config, tasks, results, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from branet_pacs.cli import configure_logging
    from branet_pacs.pipeline import Analyzer

    configure_logging(verbose=False)   # spawned: a fresh interpreter; per-instance outcomes go to the report

    analyzer = Analyzer(config)
    analyzer.warm_up()               # models load now (not on the first study) and stay loaded for every later one
    results.put(("ready", os.getpid(), None))
    while True:
        try:
            job = tasks.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:
                return   # the driver is gone (killed): nobody will read our results
            continue
        if job is None:
            return
        results.put(("started", os.getpid(), job.study_uid))
        try:
            report = run_job(job, analyzer)
        except Exception as exc:  # noqa: BLE001 - the study fails, the worker goes on with the next one
            log.exception("study %s failed in the worker", job.study_uid)
            report = StudyReport(job.study_uid, StudyState.FAILED, f"analysis failed: {type(exc).__name__}: {exc}",
                                 worker=os.getpid())
        results.put(("done", os.getpid(), report))


class WorkerPool:
    """N spawned worker processes fed through a queue; the driver bounds how many studies are in flight."""

    def __init__(self, workers: int, config: Config) -> None:
        if workers < 1:
            raise ValueError("at least one worker process is needed")
        self._ctx = get_context("spawn")
        from branet_pacs.models.runtime import threads_per_process
        self._config = replace(config, threads=threads_per_process(config.threads, workers))
        self._tasks = self._ctx.Queue()
        self._results = self._ctx.Queue()
        self._processes: dict[int, object] = {}
        self._busy: dict[int, str] = {}           # pid -> study it is working on
        self.closing = False
        for _ in range(workers):
            self._spawn()

    @property
    def pids(self) -> list[int]:
        return list(self._processes)

    def describe(self) -> dict:
        return {"engine": "local", "pids": self.pids}

    def _spawn(self) -> None:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)   # inherited across exec: workers ignore Ctrl-C
        try:
            process = self._ctx.Process(target=_worker_main, name="branet-reanalyze-worker", daemon=True,
                                        args=(self._config, self._tasks, self._results, os.getpid()))
            process.start()
        finally:
            signal.signal(signal.SIGINT, previous)
        self._processes[process.pid] = process

    def submit(self, job: StudyJob) -> None:
        self._tasks.put(job)

    def next_report(self, timeout: float | None = None) -> StudyReport | None:
        """The next finished study (None when `timeout` passes first); dead workers' studies come back failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = POLL_SECONDS if deadline is None else max(0.0, min(POLL_SECONDS, deadline - time.monotonic()))
            try:
                kind, pid, value = self._results.get(timeout=wait)
            except queue.Empty:
                report = self._reap()
                if report is not None:
                    return report
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            if kind == "started":
                self._busy[pid] = value
            elif kind == "done":
                self._busy.pop(pid, None)
                return value

    def _reap(self) -> StudyReport | None:
        """Replace a worker that died; report the study it was working on as failed."""
        for pid, process in list(self._processes.items()):
            if process.is_alive():
                continue
            del self._processes[pid]
            code = process.exitcode
            if not self.closing:
                self._spawn()
            study = self._busy.pop(pid, None)
            if study is not None:
                log.error("worker %d died (exit code %s) while analysing study %s", pid, code, study)
                return StudyReport(study, StudyState.FAILED, f"worker process died (exit code {code})", worker=pid)
        return None

    def close(self, timeout: float = 30.0) -> None:
        """Let workers finish and exit (nothing must be in flight); kill the ones that do not."""
        self.closing = True
        for _ in self._processes:
            self._tasks.put(None)
        deadline = time.monotonic() + timeout
        for process in self._processes.values():
            process.join(max(0.0, deadline - time.monotonic()))
        self.kill()

    def kill(self) -> None:
        """Stop every worker now (SIGKILL by PID: only processes this pool started)."""
        self.closing = True
        for pid, process in list(self._processes.items()):
            if process.is_alive():
                os.kill(pid, signal.SIGKILL)
            process.join(5)
        self._processes.clear()
        self._tasks.close()
        self._results.close()
        self._tasks.cancel_join_thread()
        self._results.cancel_join_thread()
