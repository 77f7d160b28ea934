"""Re-analysis on a Ray cluster: `branet reanalyze --engine ray [--ray-address ADDR]`.

The driver (run.py) stays what it is with the local engine: it lists, retrieves, stores and owns the SQLite state;
only the analysis moves. `RayPool` has the interface of the local `WorkerPool`: N Ray actors each hold one loaded
`Analyzer` (models load once per actor), a study is one actor call. Nodes need not share a file system: the study's
files travel as bytes through Ray's object store and the SEG + SR come back as bytes, which the driver writes into
the job's out_dir exactly as a local worker would (same names, same content, same UIDs). The driver keeps at most
`workers + 1` studies in flight, so the object store never holds more than that.

Faults: when an actor dies mid-study (its process killed, its node gone, out of memory) the study goes back to the
front of the queue and runs on another actor; a replacement actor is started (it waits for room on the cluster).
A study is stored only from the one answer the driver accepts, so it is stored exactly once. A study whose
actors die `MAX_ATTEMPTS` times is reported failed (it is probably what kills them). Actors belong to the driver's
Ray job: when the driver dies, Ray removes them, and the next run resumes from the state file.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import tempfile
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from branet_pacs.config import Config
from branet_pacs.reanalysis.workers import StudyJob, StudyReport, run_job
from branet_pacs.types import StudyState

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3                 # actors that may die on one study before it is reported failed
START_TIMEOUT = 600.0            # seconds for the first actor to load its models (a guard against a full cluster)
START_GRACE = 60.0             # seconds the other actors may take after the first is ready
POLL_SECONDS = 0.5


class EngineUnavailable(RuntimeError):
    """The Ray engine cannot run: ray is not installed, the cluster cannot be reached, or no actor could start."""


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise EngineUnavailable("--engine ray needs the ray package: pip install 'branet-pacs[ray]' "
                                "(make setup installs it)") from exc
    return ray


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast with the cause when the cluster's address does not answer: `ray.init` would otherwise retry
    for a minute and then raise a long, generic error."""
    if address in ("", "auto", "local"):
        return
    target = urlsplit(address if "://" in address else f"ray-gcs://{address}")
    if not target.hostname or not target.port:
        raise EngineUnavailable(f"--ray-address wants HOST:PORT (or ray://HOST:PORT), got {address!r}")
    try:
        with socket.create_connection((target.hostname, target.port), timeout=timeout):
            pass
    except ConnectionRefusedError:
        raise EngineUnavailable(f"cannot reach the Ray cluster at {address}: connection refused") from None
    except TimeoutError:
        raise EngineUnavailable(f"cannot reach the Ray cluster at {address}: no answer in {timeout:.0f} s") from None
    except OSError as exc:
        raise EngineUnavailable(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


class AnalyzerActor:
    """One Ray actor: a loaded Analyzer; analyses one study per call from its files' bytes."""

    def __init__(self, config: Config) -> None:
        from branet_pacs.cli import configure_logging
        from branet_pacs.pipeline import Analyzer

        configure_logging(verbose=False)
        self.analyzer = Analyzer(config)
        self.missing = self.analyzer.warm_up()   # models this node lacks: its studies then fail with that reason

    def where(self) -> tuple[int, str, str, list[str]]:
        """(process ID, node ID, node IP, models it could not load) of this actor; answers once they are loaded."""
        import ray

        context = ray.get_runtime_context()
        return os.getpid(), context.get_node_id(), ray.util.get_node_ip_address(), self.missing

    def analyse(self, study_uid: str, files: list[tuple[str, bytes]]) -> tuple[StudyReport, list[tuple[str, bytes]]]:
        """The local worker's `run_job` on a private copy of the files; outputs come back as (relative name, bytes)."""
        import ray

        node = ray.get_runtime_context().get_node_id()
        with tempfile.TemporaryDirectory(prefix="branet-ray-") as tmp:
            inputs = Path(tmp) / "in"
            inputs.mkdir()
            paths = []
            for name, data in files:
                path = inputs / name
                path.write_bytes(data)
                paths.append(path)
            out_dir = Path(tmp) / "out"
            report = run_job(StudyJob(study_uid, tuple(paths), out_dir), self.analyzer)
            outputs = [(str(path.relative_to(out_dir)), path.read_bytes()) for path in report.outputs]
        return replace(report, outputs=(), node=node), outputs


@dataclass
class _Actor:
    handle: object
    pid: int = 0
    node: str = ""
    ip: str = ""
    missing: tuple[str, ...] = ()


@dataclass
class _Task:
    job: StudyJob
    payload: object              # ObjectRef of the files' bytes, kept for a retry
    attempts: int = 0
    lost_on: tuple[str, ...] = ()  # why earlier attempts ended


class RayPool:
    """`workers` AnalyzerActors on the Ray cluster at `address` (None: a new single-machine Ray instance)."""

    def __init__(self, workers: int, config: Config, address: str | None = None, cpus_per_worker: int = 1) -> None:
        if workers < 1:
            raise ValueError("at least one worker is needed")
        ray = _ray()
        check_reachable(address or "")
        self._ray = ray
        self.address = address or "local"
        self._owns_instance = not ray.is_initialized()
        if self._owns_instance:
            options = {"address": address, "logging_level": logging.WARNING, "log_to_driver": False}
            if not address:
                options.update(include_dashboard=False, num_cpus=max(workers * cpus_per_worker, os.cpu_count() or 1))
            try:
                ray.init(**options)
            except (ConnectionError, RuntimeError) as exc:
                raise EngineUnavailable(f"cannot connect to the Ray cluster at {self.address}: "
                                        f"{str(exc).splitlines()[0]}") from exc
        gpu = config.device == "cuda"
        self._config = replace(config, threads=cpus_per_worker)
        self._actor_class = ray.remote(num_cpus=cpus_per_worker, num_gpus=1 if gpu else 0,
                                       max_restarts=0)(AnalyzerActor)
        self._idle: deque[_Actor] = deque()
        self._starting: dict[object, _Actor] = {}        # ObjectRef of `where()` -> actor loading its models
        self._running: dict[object, tuple[_Actor, _Task]] = {}
        self._queue: deque[_Task] = deque()
        self._ready: list[_Actor] = []
        self._start_failures: list[str] = []             # why actors could not load the models
        self._failure_limit = MAX_ATTEMPTS * workers
        self.closing = False
        for _ in range(workers):
            self._start_actor()
        self._wait_first_ready(workers)

    # --- actors -------------------------------------------------------------------------------------------------
    def _start_actor(self) -> None:
        actor = _Actor(self._actor_class.remote(self._config))
        self._starting[actor.handle.where.remote()] = actor

    def _wait_first_ready(self, workers: int) -> None:
        """Wait until every actor has loaded its models. A cluster with room for fewer actors than asked runs with
        the ones that started within `START_GRACE` s of the first; the others join when room appears."""
        deadline = time.monotonic() + START_TIMEOUT
        first_ready = None
        while self._starting and time.monotonic() < deadline:
            self._poll(timeout=POLL_SECONDS)
            if self._ready and first_ready is None:
                first_ready = time.monotonic()
            if first_ready is not None and time.monotonic() - first_ready > START_GRACE:
                log.warning("%d of %d Ray workers started; the others wait for room on the cluster",
                            len(self._ready), workers)
                break
        if not self._ready:
            self.kill()
            if self._start_failures:
                raise EngineUnavailable(f"no Ray actor could load the models on {self.address} "
                                        f"({len(self._start_failures)} tried): {self._start_failures[-1]}")
            raise EngineUnavailable(f"no Ray actor could load the models on {self.address} in "
                                    f"{START_TIMEOUT:.0f} s (each asks for {self._config.threads} CPU)")

    @property
    def pids(self) -> list[int]:
        return [actor.pid for actor in self._ready]

    def describe(self) -> dict:
        """For the run's log: the engine, the cluster and where each actor runs."""
        return {"engine": "ray", "address": self.address, "pids": self.pids,
                "actors": [{"pid": a.pid, "node": a.node, "ip": a.ip, "missing_models": list(a.missing)}
                           for a in self._ready]}

    # --- work ---------------------------------------------------------------------------------------------------
    def submit(self, job: StudyJob) -> None:
        files = [(path.name, Path(path).read_bytes()) for path in job.files]
        self._queue.append(_Task(job, self._ray.put(files)))
        self._assign()

    def _assign(self) -> None:
        while self._idle and self._queue:
            actor, task = self._idle.popleft(), self._queue.popleft()
            task.attempts += 1
            self._running[actor.handle.analyse.remote(task.job.study_uid, task.payload)] = (actor, task)

    def next_report(self, timeout: float | None = None) -> StudyReport | None:
        """The next finished study (None when `timeout` passes first)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = POLL_SECONDS if deadline is None else max(0.0, min(POLL_SECONDS, deadline - time.monotonic()))
            report = self._poll(wait)
            if report is not None:
                return report
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _poll(self, timeout: float) -> StudyReport | None:
        refs = [*self._running, *self._starting]
        if not refs:
            time.sleep(timeout)
            return None
        done, _ = self._ray.wait(refs, num_returns=1, timeout=timeout)
        for ref in done:
            if ref in self._starting:
                self._started(ref)
                continue
            return self._finished(ref)
        return None

    def _started(self, ref) -> None:
        actor = self._starting.pop(ref)
        try:
            actor.pid, actor.node, actor.ip, missing = self._ray.get(ref)
        except self._ray.exceptions.RayError as exc:
            why = _raised(exc)
            self._start_failures.append(why)
            log.error("a Ray actor could not start: %s", why)
            if not self.closing and len(self._start_failures) < self._failure_limit:
                self._start_actor()   # a node without our install would otherwise be retried for ever
            return
        actor.missing = tuple(missing)
        if missing:
            log.warning("Ray worker %d on node %s could not load: %s", actor.pid, actor.ip, "; ".join(missing))
        self._ready.append(actor)
        self._idle.append(actor)
        self._assign()

    def _finished(self, ref) -> StudyReport | None:
        actor, task = self._running.pop(ref)
        exceptions = self._ray.exceptions
        try:
            report, outputs = self._ray.get(ref)
        except exceptions.RayTaskError as exc:        # the analysis itself raised: the same input would again
            self._idle.append(actor)
            self._assign()
            return StudyReport(task.job.study_uid, StudyState.FAILED, f"analysis failed: {_first_line(exc)}",
                               worker=actor.pid, node=actor.node, attempts=task.attempts)
        except exceptions.RayError as exc:            # the actor, its node or the result is gone: run it elsewhere
            why = f"worker died on node {actor.ip or '?'} ({type(exc).__name__})"
            log.error("Ray worker %d died while analysing study %s: %s", actor.pid, task.job.study_uid,
                      _first_line(exc))
            self._ready = [a for a in self._ready if a is not actor]
            _kill(self._ray, actor)
            if not self.closing:
                self._start_actor()
            task.lost_on = (*task.lost_on, why)
            if task.attempts >= MAX_ATTEMPTS:
                self._assign()
                return StudyReport(task.job.study_uid, StudyState.FAILED,
                                   f"worker process died {task.attempts} times: {'; '.join(task.lost_on)}",
                                   worker=actor.pid, node=actor.node, attempts=task.attempts)
            self._queue.appendleft(task)
            self._assign()
            return None
        self._idle.append(actor)
        self._assign()
        paths = []
        for name, data in outputs:
            path = task.job.out_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            paths.append(path)
        return replace(report, outputs=tuple(paths), worker=actor.pid, attempts=task.attempts,
                       retried=task.lost_on)

    # --- end ----------------------------------------------------------------------------------------------------
    def close(self, timeout: float = 30.0) -> None:
        """Stop the actors (nothing must be in flight) and leave the cluster."""
        self.kill()

    def kill(self) -> None:
        """Stop every actor now and disconnect; a Ray instance this pool started goes with it."""
        self.closing = True
        for actor in [*self._ready, *self._starting.values(), *(a for a, _ in self._running.values())]:
            _kill(self._ray, actor)
        self._ready.clear()
        self._idle.clear()
        self._starting.clear()
        self._running.clear()
        self._queue.clear()
        if self._owns_instance and self._ray.is_initialized():
            self._ray.shutdown()


def _kill(ray, actor: _Actor) -> None:
    try:
        ray.kill(actor.handle, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone with its node
        pass


def _raised(exc: BaseException) -> str:
    """The exception an actor's set-up raised, from Ray's report of it (its last `SomeError: ...` line)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    raised = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception|Unavailable)\b.*:", line)]
    return raised[-1] if raised else _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
