"""Batch re-analysis of an archive: list -> decide -> retrieve -> analyse (worker processes) -> store back.

The driver (this module, one process) owns every network connection, the SQLite state and the JSONL log; worker
processes only run `analyze_study` on spooled files. Per study:

1. skip it when the state file says it was done under the current model key (unless `force`);
2. ask the archive for the study's series; skip when it holds no breast image series, or (unless `force`) when the
   destination already holds a BraNet-PACS SR of the current model version for every modality to analyse;
3. retrieve the breast image series into a spool folder, hand them to a worker, store the SEG + SR it wrote.

At most `workers + 1` studies are in flight (one retrieved ahead), so memory and spool space stay bounded on
archives of any size. The first Ctrl-C stops taking new studies and lets the ones in flight finish; a second one
stops at once. Either way the state file says what was done, and the next run goes on from there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from tqdm import tqdm

import branet_pacs
from branet_pacs.config import Config
from branet_pacs.models.errors import ModelUnavailable
from branet_pacs.models.manifest import MODALITIES, find_model
from branet_pacs.reanalysis.archive import (
    Archive,
    ArchiveError,
    ArchiveUnreachable,
    ConnectionOptions,
    SeriesInfo,
    StudyQuery,
    redact,
)
from branet_pacs.reanalysis.archives import open_archive
from branet_pacs.reanalysis.state import StateStore, StudyRow
from branet_pacs.reanalysis.ray_engine import EngineUnavailable, RayPool, check_reachable
from branet_pacs.reanalysis.workers import StudyJob, StudyReport, WorkerPool
from branet_pacs.types import StudyState, software_version

log = logging.getLogger(__name__)

FINAL_STUDY_STATES_ORDER = (StudyState.ANALYSED, StudyState.SKIPPED, StudyState.ERROR, StudyState.FAILED)

DONE_EARLIER = "done in an earlier run"
HAS_RESULT = "already holds a BraNet-PACS SR of the current model version"
NO_IMAGES = "no breast image series"


@dataclass(frozen=True)
class ReanalyzeOptions:
    source: str
    dest: str = "same"
    query: StudyQuery = field(default_factory=StudyQuery)
    workers: int = 1
    state: Path | None = None            # default: var/reanalyze/<source>.sqlite
    log: Path | None = None              # default: the state file with a .jsonl suffix
    force: bool = False
    connection: ConnectionOptions = field(default_factory=ConnectionOptions)
    progress: bool = True
    engine: str = "local"                # "local": worker processes here; "ray": actors on a Ray cluster
    ray_address: str | None = None       # None: a new Ray instance on this machine
    cpus_per_worker: int = 1             # ray: CPUs (and intra-op threads) each actor asks for

    def state_path(self) -> Path:
        if self.state is not None:
            return Path(self.state)
        printable = redact(self.source)
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", printable).strip("_")[:60]
        digest = hashlib.sha256(printable.encode()).hexdigest()[:8]
        return Path("var") / "reanalyze" / f"{slug}-{digest}.sqlite"

    def log_path(self) -> Path:
        return Path(self.log) if self.log is not None else self.state_path().with_suffix(".jsonl")


@dataclass
class Summary:
    listed: int = 0
    counts: Counter = field(default_factory=Counter)            # StudyState value -> studies
    reasons: Counter = field(default_factory=Counter)           # (state, reason category) -> studies
    failures: list[tuple[str, str]] = field(default_factory=list)   # (study UID, reason) of error / failed studies
    seconds: float = 0.0
    interrupted: bool = False
    aborted: str = ""                                           # why the run stopped early, if it did

    def add(self, state: StudyState, category: str, study_uid: str = "", detail: str = "") -> None:
        self.counts[state.value] += 1
        if category:
            self.reasons[(state.value, category)] += 1
        if state in (StudyState.ERROR, StudyState.FAILED):
            self.failures.append((study_uid, one_line(detail or category)))

    def as_dict(self) -> dict:
        return {"listed": self.listed, **{state.value: self.counts[state.value] for state in FINAL_STUDY_STATES_ORDER},
                "seconds": round(self.seconds, 2),
                "reasons": [{"status": s, "reason": r, "studies": n} for (s, r), n in sorted(self.reasons.items())],
                "interrupted": self.interrupted, "aborted": self.aborted}


# --------------------------------------------------------------------------------------------------- model identity

def model_kind(modality: str) -> str:
    """Which classifier analyses images of this modality (DX/CR/... breast images are treated as MG)."""
    return "US" if modality.upper() == "US" else "MG"


def version_marker(models_dir: str, kind: str) -> str:
    """The SoftwareVersions value our writers put into every object made by the current classifier of `kind`."""
    entry = find_model(models_dir, "classifier", kind)
    return software_version(entry.name, entry.version)


def current_markers(models_dir: str) -> dict[str, str | ModelUnavailable]:
    """The version marker of each modality's current classifier, or why there is none."""
    markers: dict[str, str | ModelUnavailable] = {}
    for kind in MODALITIES:
        try:
            markers[kind] = version_marker(models_dir, kind)
        except ModelUnavailable as exc:
            markers[kind] = exc
    return markers


def model_key(markers: dict[str, str | ModelUnavailable]) -> str:
    """Current classifier identity per modality; a state row is done only under the key it was done with."""
    return ";".join(f"{kind}={value if isinstance(value, str) else 'none'}" for kind, value in markers.items())


def is_branet_sr(series: SeriesInfo) -> bool:
    return series.modality == "SR" and series.manufacturer == branet_pacs.MANUFACTURER


# ---------------------------------------------------------------------------------------------------------- journal

class Journal:
    """The JSONL log: one object per line, flushed at once (a killed run keeps every line it wrote)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handle: IO[str] = open(path, "a", encoding="utf-8")

    def write(self, event: str, **values) -> None:
        record = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "event": event, **values}
        self._handle.write(json.dumps(record, sort_keys=False, default=str) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


# ------------------------------------------------------------------------------------------------------------ driver

@dataclass(frozen=True)
class _Plan:
    """What to do with one study: retrieve these series, or record `status` with `category`/`detail`."""

    series: tuple[str, ...] = ()
    state: StudyState | None = None
    category: str = ""
    detail: str = ""


class _Stop:
    """SIGINT handling: the first Ctrl-C asks for a graceful stop, the second interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> "_Stop":
        if threading.current_thread() is threading.main_thread():   # signals can only be handled there
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("stopping: finishing the studies in flight (Ctrl-C again to stop at once)")


def open_pool(engine: str, workers: int, config: Config, ray_address: str | None = None,
              cpus_per_worker: int = 1) -> WorkerPool | RayPool:
    """The analysis workers of one run: local processes (`workers.WorkerPool`) or Ray actors
    (`ray_engine.RayPool`); both offer submit / next_report / describe / close / kill."""
    if engine == "local":
        return WorkerPool(workers, config)
    if engine == "ray":
        return RayPool(workers, config, ray_address, cpus_per_worker)
    raise ValueError(f"unknown engine {engine!r} (local or ray)")


class Reanalysis:
    """One run. `run()` returns the Summary; ArchiveUnreachable escapes when a source cannot be reached at start."""

    def __init__(self, options: ReanalyzeOptions, config: Config) -> None:
        if options.workers < 1:
            raise ValueError("--workers must be at least 1")
        self.options = options
        self.config = config
        self.summary = Summary()
        self.source: Archive = open_archive(options.source, options.connection)
        self.dest: Archive = self.source if options.dest == "same" else open_archive(options.dest,
                                                                                      options.connection)
        self.rules = config.ingest
        self.image_modalities = {m.upper() for m in (*self.rules.breast_modalities, *self.rules.body_part_modalities)}
        self._markers = current_markers(config.models_dir)
        self.key = model_key(self._markers)
        self.pool = None                            # WorkerPool or RayPool, started with the first study
        self.in_flight: set[str] = set()            # studies handed to the workers, not stored yet
        self.bar: tqdm | None = None

    # --- the run ------------------------------------------------------------------------------------------------
    def run(self) -> Summary:
        try:
            self.source.check()
            if self.dest is not self.source:
                self.dest.check()
            if self.options.engine == "ray":
                check_reachable(self.options.ray_address or "")
            return self._run()
        finally:
            self.source.close()
            if self.dest is not self.source:
                self.dest.close()

    def _run(self) -> Summary:
        started = time.monotonic()
        options = self.options
        state_path = options.state_path()
        spool = state_path.with_suffix(".spool")
        with StateStore(state_path) as state, _Stop() as stop:
            shutil.rmtree(spool, ignore_errors=True)   # left by a killed run (the lock is ours): redone below
            journal = Journal(options.log_path())
            self.state, self.journal, self.spool = state, journal, spool
            run = state.begin_run(self.source.url, self.dest.url, self.key, self._arguments())
            journal.write("run", run=run, source=self.source.url, dest=self.dest.url, model_key=self.key,
                          query=options.query.keys, modalities=list(options.query.modalities),
                          workers=options.workers, engine=options.engine, force=options.force,
                          state=str(state_path))
            try:
                to_do = self._list(run)
                self._work(run, to_do, stop)
            except KeyboardInterrupt:
                self.summary.interrupted = True
                self._abandon("interrupted")
            except (ArchiveUnreachable, EngineUnavailable) as exc:
                self.summary.aborted = str(exc)
                self._abandon(str(exc))
            finally:
                if self.pool is not None:
                    self.pool.kill() if self.summary.interrupted or self.summary.aborted else self.pool.close()
                if self.bar is not None:
                    self.bar.close()
                shutil.rmtree(spool, ignore_errors=True)
                self.summary.seconds = time.monotonic() - started
                self.summary.interrupted = self.summary.interrupted or stop.requested
                state.finish_run(run, self.summary.as_dict())
                journal.write("summary", run=run, **self.summary.as_dict())
                journal.close()
        return self.summary

    def _arguments(self) -> dict:
        o = self.options
        return {"query": o.query.keys, "modalities": list(o.query.modalities), "workers": o.workers,
                "engine": o.engine, "ray_address": o.ray_address,
                "force": o.force, "retrieve": o.connection.retrieve, "calling_aet": o.connection.calling_aet}

    def _list(self, run: int) -> int:
        """List matching studies into the state file; returns how many are still to do."""
        counter = tqdm(desc="listing studies", unit=" studies", disable=not self.options.progress, leave=False)

        def counted(studies):
            for ref in studies:
                counter.update(1)
                yield ref

        try:
            self.summary.listed = self.state.record_listed(run, self.source.url,
                                                           counted(self.source.iter_studies(self.options.query)))
        except ArchiveError as exc:
            if isinstance(exc, ArchiveUnreachable):
                raise
            raise ArchiveUnreachable(f"cannot list studies on {self.source.url}: {exc}") from exc
        finally:
            counter.close()
        listed, done = self.state.count(run, self.source.url, self.key, self.options.force)
        for _ in range(done):
            self.summary.add(StudyState.SKIPPED, DONE_EARLIER)
        self.journal.write("listed", run=run, studies=listed, done_earlier=done, to_do=listed - done)
        return listed - done

    def _work(self, run: int, to_do: int, stop: _Stop) -> None:
        self.bar = tqdm(total=to_do, desc="reanalyze", unit="study", disable=not self.options.progress,
                        dynamic_ncols=True)
        limit = self.options.workers + 1
        for row in self.state.todo(run, self.source.url, self.key, self.options.force):
            if stop.requested:
                break
            plan = self._plan(row)
            if plan.state is not None:
                self._record(row.study_uid, plan.state, plan.category, plan.detail)
                continue
            while len(self.in_flight) >= limit:
                self._collect(block=True)
            if stop.requested:
                break
            self._dispatch(row, plan)
            while self._collect(block=False):
                pass
        while self.in_flight:
            self._collect(block=True)

    # --- per study ----------------------------------------------------------------------------------------------
    def _marker(self, kind: str) -> str:
        value = self._markers[kind]
        if isinstance(value, ModelUnavailable):
            raise value
        return value

    def _plan(self, row: StudyRow) -> _Plan:
        if row.modalities and not self.image_modalities & set(row.modalities):
            return _Plan(state=StudyState.SKIPPED, category=NO_IMAGES,
                         detail=f"modalities {'/'.join(row.modalities)}")
        try:
            series = self.source.series(row.study_uid)
        except ArchiveUnreachable:
            raise
        except ArchiveError as exc:
            return _Plan(state=StudyState.FAILED, category="series query failed", detail=str(exc))
        images = [s for s in series if s.modality in self.image_modalities
                  and s.manufacturer != branet_pacs.MANUFACTURER]
        if not images:
            found = "/".join(sorted({s.modality for s in series})) or "none"
            return _Plan(state=StudyState.SKIPPED, category=NO_IMAGES, detail=f"series modalities {found}")
        try:
            markers = {self._marker(model_kind(s.modality)) for s in images}
        except ModelUnavailable as exc:
            return _Plan(state=StudyState.FAILED, category="model unavailable", detail=str(exc))
        if not self.options.force:
            try:
                existing = series if self.dest is self.source else self.dest.series(row.study_uid)
            except ArchiveUnreachable:
                raise
            except ArchiveError as exc:
                return _Plan(state=StudyState.FAILED, category="series query failed", detail=str(exc))
            versions = {v for s in existing if is_branet_sr(s) for v in s.software_versions}
            if markers <= versions:
                return _Plan(state=StudyState.SKIPPED, category=HAS_RESULT, detail=", ".join(sorted(markers)))
        return _Plan(series=tuple(s.series_uid for s in images))

    def _dispatch(self, row: StudyRow, plan: _Plan) -> None:
        uid = row.study_uid
        self.state.mark(self.source.url, uid, StudyState.RUNNING)
        folder = self.spool / _safe_name(uid)
        try:
            files = self.source.retrieve(uid, plan.series, folder / "in")
        except ArchiveUnreachable:
            self.state.mark(self.source.url, uid, StudyState.QUEUED, "retrieve interrupted: archive unreachable")
            raise
        except (ArchiveError, OSError) as exc:
            self._record(uid, StudyState.FAILED, "retrieve failed", str(exc))
            shutil.rmtree(folder, ignore_errors=True)
            return
        if not files:
            self._record(uid, StudyState.FAILED, "retrieve failed", "the archive sent no instance")
            shutil.rmtree(folder, ignore_errors=True)
            return
        if self.pool is None:
            o = self.options
            try:
                self.pool = open_pool(o.engine, o.workers, self.config, o.ray_address, o.cpus_per_worker)
            except EngineUnavailable:
                self.state.mark(self.source.url, uid, StudyState.QUEUED, "not started: no analysis engine")
                shutil.rmtree(folder, ignore_errors=True)
                raise
            self.journal.write("workers", **self.pool.describe())
        self.in_flight.add(uid)
        self.pool.submit(StudyJob(uid, tuple(files), folder / "out"))

    def _collect(self, block: bool) -> bool:
        """Handle one finished study if there is one (waiting for it when `block`); True when one was handled."""
        if self.pool is None or not self.in_flight:
            return False
        report = self.pool.next_report(timeout=None if block else 0.0)
        if report is None:
            return False
        self.in_flight.discard(report.study_uid)
        self._finish(report)
        return True

    def _finish(self, report: StudyReport) -> None:
        uid = report.study_uid
        state, category, detail = report.state, "", report.reason
        if report.outputs:
            try:
                self.dest.store(list(report.outputs))
            except ArchiveUnreachable:
                self.state.mark(self.source.url, uid, StudyState.QUEUED, "store interrupted: archive unreachable")
                raise
            except (ArchiveError, OSError, ValueError) as exc:   # ValueError: an output pydicom cannot read back
                state, category, detail = StudyState.FAILED, "store failed", str(exc)
        if state in (StudyState.ERROR, StudyState.FAILED) and not category:
            category = _category(report)
        elif state is StudyState.SKIPPED:
            category = "no breast image"
        elif state is StudyState.ANALYSED and report.errors:
            category = "some instances with errors"
        self._record(uid, state, category, detail, report)
        shutil.rmtree(self.spool / _safe_name(uid), ignore_errors=True)

    def _record(self, uid: str, state: StudyState, category: str, detail: str,
                report: StudyReport | None = None) -> None:
        outputs = len(report.outputs) if report else 0
        done = state in (StudyState.ANALYSED, StudyState.SKIPPED)
        self.state.mark(self.source.url, uid, state, one_line(detail or category),
                        model_key=self.key if done else "", outputs=outputs)
        self.summary.add(state, category, uid, detail)
        entry = {"study_uid": uid, "status": state.value, "reason": category or state.value, "detail": detail[:2000]}
        if report is not None:
            entry.update(instances=report.instances, findings=report.findings, outputs=outputs,
                         seconds=round(report.seconds, 3), worker=report.worker, attempts=report.attempts,
                         errors=[{"sop_instance_uid": s, "reason": r} for s, r in report.errors])
            if report.node:
                entry.update(node=report.node)
            if report.retried:
                entry.update(retried=list(report.retried))
        self.journal.write("study", **entry)
        if self.bar is not None:
            self.bar.update(1)
            counts = self.summary.counts
            self.bar.set_postfix(analysed=counts["analysed"], skipped=counts["skipped"],
                                 error=counts["error"], failed=counts["failed"], refresh=False)

    def _abandon(self, why: str) -> None:
        """Studies in flight when the run stops are left for the next run (state: pending)."""
        for uid in sorted(self.in_flight):
            self.state.mark(self.source.url, uid, StudyState.QUEUED, f"not finished: {why}")
            self.journal.write("study", study_uid=uid, status=StudyState.QUEUED.value, reason=f"not finished: {why}")
        self.in_flight.clear()


_CATEGORIES = ("model unavailable", "worker process died", "analysis failed")


def _category(report: StudyReport) -> str:
    """The summary line an error / failed study belongs to."""
    reasons = [report.reason, *(reason for _, reason in report.errors)]
    for category in _CATEGORIES:
        if any(reason.startswith(category) or f": {category}" in reason for reason in reasons):
            return category
    return "ingest error" if report.errors else "analysis failed"


def one_line(text: str, limit: int = 300) -> str:
    """The first line of a message, cut to `limit` characters (summaries and the state file)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _safe_name(uid: str) -> str:
    return re.sub(r"[^0-9A-Za-z.]", "_", uid)[:128]


def reanalyze(options: ReanalyzeOptions, config: Config) -> Summary:
    """Run one re-analysis (see the module docstring)."""
    return Reanalysis(options, config).run()


def with_models_dir(config: Config, models_dir: str | None) -> Config:
    return dataclasses.replace(config, models_dir=str(Path(models_dir).resolve())) if models_dir else config
