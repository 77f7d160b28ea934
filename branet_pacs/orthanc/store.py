"""The durable service state: a SQLite database under the data directory (standard library only).

It holds the study queue, what was decided for every instance, the SEG/SR outputs BraNet made (their SOP Instance
UIDs are recorded *before* they are stored into Orthanc, so our own objects are recognised and never re-trigger
analysis), forwarding state, counters and recent events. Output UIDs are deterministic: an instance whose decision
was not recorded when a worker died is simply analysed again, and storing its (identical) outputs again is
idempotent, since Orthanc keeps one copy per SOP Instance UID. The plugin (threads inside Orthanc) and the worker
processes each open their own connection; WAL mode and short `BEGIN IMMEDIATE` transactions keep them consistent.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from branet_pacs.orthanc.status import ForwardState
from branet_pacs.types import FINAL_STUDY_STATES, Status, StudyState

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_id        TEXT PRIMARY KEY,          -- Orthanc study id
    study_uid       TEXT NOT NULL DEFAULT '',
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0, -- attempts of the current run
    runs            INTEGER NOT NULL DEFAULT 0, -- runs completed
    reason          TEXT NOT NULL DEFAULT '',
    model_version   TEXT NOT NULL DEFAULT '',
    queued_at       REAL,
    started_at      REAL,
    finished_at     REAL,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    worker          TEXT NOT NULL DEFAULT '',
    pending         INTEGER NOT NULL DEFAULT 0, -- new images arrived while running: run again afterwards
    force           INTEGER NOT NULL DEFAULT 0  -- re-analyse every image, replacing earlier outputs
);
CREATE INDEX IF NOT EXISTS studies_state ON studies(state, next_attempt_at);
CREATE TABLE IF NOT EXISTS instances (
    instance_id   TEXT PRIMARY KEY,            -- Orthanc instance id of a source instance
    study_id      TEXT NOT NULL,
    sop_uid       TEXT NOT NULL DEFAULT '',
    state         TEXT NOT NULL,               -- 'pending' (planned by a run) or a Status value (decided)
    reason        TEXT NOT NULL DEFAULT '',
    modality      TEXT NOT NULL DEFAULT '',
    model_version TEXT NOT NULL DEFAULT '',
    images        TEXT NOT NULL DEFAULT '[]',  -- JSON: one entry per analysed frame (findings, SEG/SR UIDs)
    analysed_at   REAL,
    timings       TEXT NOT NULL DEFAULT '{}'   -- JSON: seconds per step (fetch, decode, pipeline stages, store)
);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_id);
CREATE TABLE IF NOT EXISTS outputs (
    sop_uid         TEXT PRIMARY KEY,          -- SOP Instance UID of a SEG or SR made by BraNet
    study_id        TEXT NOT NULL,
    source_instance TEXT NOT NULL,
    kind            TEXT NOT NULL,             -- SEG | SR
    instance_id     TEXT NOT NULL DEFAULT '',  -- Orthanc id once stored
    stored          INTEGER NOT NULL DEFAULT 0,
    forward_queued  INTEGER NOT NULL DEFAULT 0, -- handed to the forwarder (or no destination configured)
    created_at      REAL,
    stored_at       REAL
);
CREATE INDEX IF NOT EXISTS outputs_study ON outputs(study_id);
CREATE TABLE IF NOT EXISTS forwards (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    study_id        TEXT NOT NULL,
    destination     TEXT NOT NULL,
    resources       TEXT NOT NULL,             -- JSON list of Orthanc ids
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    job_id          TEXT NOT NULL DEFAULT '',
    error           TEXT NOT NULL DEFAULT '',
    created_at      REAL,
    updated_at      REAL
);
CREATE INDEX IF NOT EXISTS forwards_state ON forwards(state, next_attempt_at);
CREATE TABLE IF NOT EXISTS events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       REAL NOT NULL,
    level    TEXT NOT NULL,
    study_id TEXT NOT NULL DEFAULT '',
    message  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    study_id  TEXT NOT NULL,
    run       INTEGER NOT NULL,                -- the study's run (0 = its first)
    attempt   INTEGER NOT NULL,                -- the attempt within that run
    worker    TEXT NOT NULL DEFAULT '',
    at        REAL NOT NULL,
    outcome   TEXT NOT NULL,                   -- a final state, "retrying" or "failed"
    reason    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS attempts_study ON attempts(study_id);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

# Columns added after the first release: (table, column, declaration), applied to older databases on open.
MIGRATIONS = (("outputs", "stored_at", "REAL"), ("instances", "timings", "TEXT NOT NULL DEFAULT '{}'"))
# Before output UIDs were deterministic an instance could be left 'storing' (outbox files being posted): such an
# instance is simply analysed again now.
STATE_MIGRATION = "UPDATE instances SET state = 'pending' WHERE state = 'storing'"
PENDING = "pending"   # instances.state of an instance planned by a run and not decided yet
MAX_EVENTS = 500


@dataclass(frozen=True)
class StudyRecord:
    study_id: str
    study_uid: str
    state: StudyState
    attempts: int
    runs: int
    reason: str
    model_version: str
    queued_at: float | None
    started_at: float | None
    finished_at: float | None
    next_attempt_at: float
    worker: str
    pending: bool
    force: bool

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "StudyRecord":
        values = dict(row)
        values["state"] = StudyState(values["state"])
        values["pending"] = bool(values["pending"])
        values["force"] = bool(values["force"])
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        values = dict(self.__dict__)
        values["state"] = self.state.value
        return values


@dataclass(frozen=True)
class InstanceRecord:
    """What was decided for one source instance; `status` None: planned by a run, not decided yet."""

    instance_id: str
    study_id: str
    sop_uid: str
    status: Status | None
    reason: str = ""
    modality: str = ""
    model_version: str = ""
    images: list[dict[str, Any]] = field(default_factory=list)
    analysed_at: float | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "InstanceRecord":
        values = dict(row)
        state = values.pop("state")
        values["status"] = None if state == PENDING else Status(state)
        values["images"] = json.loads(values["images"] or "[]")
        values["timings"] = json.loads(values.get("timings") or "{}")
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        values = dict(self.__dict__)
        values["state"] = values.pop("status").value if self.status is not None else PENDING
        return values


@dataclass(frozen=True)
class OutputRecord:
    sop_uid: str
    study_id: str
    source_instance: str
    kind: str
    instance_id: str = ""
    stored: bool = False
    forward_queued: bool = False
    created_at: float | None = None
    stored_at: float | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "OutputRecord":
        values = dict(row)
        values.pop("file", None)   # databases from before deterministic UIDs had an outbox file column
        values["stored"] = bool(values["stored"])
        values["forward_queued"] = bool(values["forward_queued"])
        return cls(**values)


@dataclass(frozen=True)
class ForwardRecord:
    id: int
    study_id: str
    destination: str
    resources: list[str]
    state: ForwardState
    attempts: int
    next_attempt_at: float
    job_id: str
    error: str
    created_at: float | None
    updated_at: float | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "ForwardRecord":
        values = dict(row)
        values["state"] = ForwardState(values["state"])
        values["resources"] = json.loads(values["resources"])
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        values = dict(self.__dict__)
        values["state"] = self.state.value
        return values


@dataclass(frozen=True)
class Retry:
    """What became of an interrupted study: queued again (after `delay` s) or failed for good."""

    study_id: str
    state: StudyState
    attempts: int
    reason: str


class ServiceStore:
    """The service database. One object may be shared by threads: each thread gets its own connection."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        db = self._connection()
        db.executescript(SCHEMA)
        for table, column, kind in MIGRATIONS:
            if column not in {r["name"] for r in db.execute(f"PRAGMA table_info({table})")}:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        db.execute(STATE_MIGRATION)

    # --- plumbing ------------------------------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=True)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")   # a committed decision survives a power cut
            db.execute("PRAGMA busy_timeout=60000")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE: writers queue up instead of failing on upgrade)."""
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self._connection().execute(sql, params).fetchall()

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # --- queue -----------------------------------------------------------------------------------------------------
    def enqueue(self, study_id: str, study_uid: str = "", force: bool = False, now: float | None = None) -> str:
        """Ask for (another) analysis of a study. Returns "queued", "pending" (it is running: it will run again
        when this run ends) or "already-queued"."""
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute("SELECT state, study_uid FROM studies WHERE study_id = ?", (study_id,)).fetchone()
            if row is None:
                db.execute("INSERT INTO studies (study_id, study_uid, state, queued_at, next_attempt_at, force) "
                           "VALUES (?, ?, ?, ?, 0, ?)", (study_id, study_uid, StudyState.QUEUED.value, now, int(force)))
                return "queued"
            uid = study_uid or row["study_uid"]
            if row["state"] == StudyState.RUNNING.value:
                db.execute("UPDATE studies SET pending = 1, force = force OR ?, study_uid = ? WHERE study_id = ?",
                           (int(force), uid, study_id))
                return "pending"
            if row["state"] == StudyState.QUEUED.value:
                # a new request makes a study waiting out a retry delay due now
                db.execute("UPDATE studies SET force = force OR ?, study_uid = ?, next_attempt_at = 0 "
                           "WHERE study_id = ?", (int(force), uid, study_id))
                return "already-queued"
            db.execute("UPDATE studies SET state = ?, attempts = 0, queued_at = ?, next_attempt_at = 0, worker = '', "
                       "force = ?, study_uid = ? WHERE study_id = ?",
                       (StudyState.QUEUED.value, now, int(force), uid, study_id))
            return "queued"

    def claim(self, worker: str, now: float | None = None) -> StudyRecord | None:
        """Take the oldest due queued study for `worker` (counts one attempt)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute("SELECT study_id FROM studies WHERE state = ? AND next_attempt_at <= ? "
                             "ORDER BY queued_at, study_id LIMIT 1", (StudyState.QUEUED.value, now)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE studies SET state = ?, worker = ?, started_at = ?, attempts = attempts + 1, "
                       "pending = 0 WHERE study_id = ?", (StudyState.RUNNING.value, worker, now, row["study_id"]))
            claimed = db.execute("SELECT * FROM studies WHERE study_id = ?", (row["study_id"],)).fetchone()
        return StudyRecord.from_row(claimed)

    def finish(self, study_id: str, worker: str, state: StudyState, reason: str, model_version: str,
               now: float | None = None) -> StudyRecord:
        """Record the outcome of a run. A study that got new images meanwhile is queued again straight away."""
        if state not in FINAL_STUDY_STATES:
            raise ValueError(f"finish() wants a final state, got {state}")
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute("SELECT pending FROM studies WHERE study_id = ? AND worker = ? AND state = ?",
                             (study_id, worker, StudyState.RUNNING.value)).fetchone()
            if row is None:
                raise LookupError(f"study {study_id} is not held by worker {worker}")
            next_state = StudyState.QUEUED if row["pending"] else state
            self._attempt(db, study_id, state.value, reason, now)
            db.execute("UPDATE studies SET state = ?, reason = ?, model_version = ?, finished_at = ?, attempts = 0, "
                       "runs = runs + 1, worker = '', pending = 0, force = 0, next_attempt_at = 0, "
                       "queued_at = CASE WHEN ? THEN ? ELSE queued_at END WHERE study_id = ?",
                       (next_state.value, reason, model_version, now, int(bool(row["pending"])), now, study_id))
            return StudyRecord.from_row(db.execute("SELECT * FROM studies WHERE study_id = ?", (study_id,)).fetchone())

    @staticmethod
    def _attempt(db: sqlite3.Connection, study_id: str, outcome: str, reason: str, now: float) -> None:
        """Keep how one attempt of a study ended (the study row only holds the current run's count)."""
        row = db.execute("SELECT runs, attempts, worker FROM studies WHERE study_id = ?", (study_id,)).fetchone()
        if row is not None:
            db.execute("INSERT INTO attempts (study_id, run, attempt, worker, at, outcome, reason) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", (study_id, int(row["runs"]), int(row["attempts"]),
                                                        row["worker"], now, outcome, reason[:2000]))

    def attempts(self, study_id: str) -> list[dict[str, Any]]:
        """Every attempt of every run of a study, oldest first: when, by which worker, how it ended and why."""
        return [dict(r) for r in self._query(
            "SELECT run, attempt, worker, at, outcome, reason FROM attempts WHERE study_id = ? ORDER BY id",
            (study_id,))]

    def retry_or_fail(self, study_id: str, reason: str, max_attempts: int, delay: float,
                      worker: str | None = None, now: float | None = None) -> Retry | None:
        """A run was interrupted: queue it again after `delay` s, or mark it failed once attempts are used up.

        With `worker`, only when that worker still holds the study (None when it does not)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            return self._retry_or_fail(db, study_id, reason, max_attempts, delay, worker, now)

    def _retry_or_fail(self, db: sqlite3.Connection, study_id: str, reason: str, max_attempts: int, delay: float,
                       worker: str | None, now: float) -> Retry | None:
        row = db.execute("SELECT attempts, worker, state FROM studies WHERE study_id = ?", (study_id,)).fetchone()
        if row is None or row["state"] != StudyState.RUNNING.value or (worker is not None and row["worker"] != worker):
            return None
        attempts = int(row["attempts"])
        self._attempt(db, study_id, "failed" if attempts >= max_attempts else "retrying", reason, now)
        if attempts >= max_attempts:
            text = f"{reason} (attempt {attempts} of {max_attempts}; giving up)"
            db.execute("UPDATE studies SET state = ?, reason = ?, finished_at = ?, worker = '', pending = 0, "
                       "force = 0 WHERE study_id = ?", (StudyState.FAILED.value, text, now, study_id))
            self._event(db, "error", study_id, f"failed: {text}", now)
            return Retry(study_id, StudyState.FAILED, attempts, text)
        text = f"{reason} (attempt {attempts} of {max_attempts}; retrying)"
        db.execute("UPDATE studies SET state = ?, reason = ?, worker = '', next_attempt_at = ? WHERE study_id = ?",
                   (StudyState.QUEUED.value, text, now + delay * (2 ** (attempts - 1)), study_id))
        self._event(db, "warning", study_id, text, now)
        return Retry(study_id, StudyState.QUEUED, attempts, text)

    def requeue(self, study_id: str, worker: str) -> None:
        """Give a study back without counting the attempt (clean shutdown of its worker)."""
        with self._tx() as db:
            db.execute("UPDATE studies SET state = ?, worker = '', attempts = MAX(attempts - 1, 0), "
                       "next_attempt_at = 0 WHERE study_id = ? AND worker = ? AND state = ?",
                       (StudyState.QUEUED.value, study_id, worker, StudyState.RUNNING.value))

    def release_worker(self, worker: str, reason: str, max_attempts: int, delay: float) -> list[Retry]:
        """The worker `worker` is gone: its running studies are retried (or failed when attempts are used up)."""
        now = time.time()
        with self._tx() as db:
            rows = db.execute("SELECT study_id FROM studies WHERE state = ? AND worker = ?",
                              (StudyState.RUNNING.value, worker)).fetchall()
            results = [self._retry_or_fail(db, r["study_id"], reason, max_attempts, delay, worker, now) for r in rows]
        return [r for r in results if r is not None]

    def recover_running(self, live_workers: Iterable[str], reason: str, max_attempts: int,
                        delay: float) -> list[Retry]:
        """Studies found running but held by no live worker (a crash of Orthanc or of a worker) are retried."""
        live = set(live_workers)
        now = time.time()
        with self._tx() as db:
            rows = db.execute("SELECT study_id, worker FROM studies WHERE state = ?",
                              (StudyState.RUNNING.value,)).fetchall()
            results = [self._retry_or_fail(db, r["study_id"], reason, max_attempts, 0.0, None, now)
                       for r in rows if r["worker"] not in live]
        return [r for r in results if r is not None]

    def running(self) -> list[StudyRecord]:
        return [StudyRecord.from_row(r) for r in self._query(
            "SELECT * FROM studies WHERE state = ? ORDER BY started_at", (StudyState.RUNNING.value,))]

    def study(self, study_id: str) -> StudyRecord | None:
        rows = self._query("SELECT * FROM studies WHERE study_id = ?", (study_id,))
        return StudyRecord.from_row(rows[0]) if rows else None

    def studies(self, limit: int = 50, states: Iterable[StudyState] | None = None) -> list[StudyRecord]:
        if states:
            wanted = [s.value for s in states]
            marks = ",".join("?" * len(wanted))
            rows = self._query(f"SELECT * FROM studies WHERE state IN ({marks}) "
                               "ORDER BY COALESCE(finished_at, queued_at) DESC LIMIT ?", (*wanted, limit))
        else:
            rows = self._query("SELECT * FROM studies ORDER BY COALESCE(finished_at, queued_at) DESC LIMIT ?",
                               (limit,))
        return [StudyRecord.from_row(r) for r in rows]

    def state_counts(self) -> dict[str, int]:
        counts = {state.value: 0 for state in StudyState}
        for row in self._query("SELECT state, COUNT(*) AS n FROM studies GROUP BY state"):
            counts[row["state"]] = int(row["n"])
        return counts

    # --- instances and outputs -------------------------------------------------------------------------------------
    def known_instances(self, study_id: str) -> tuple[set[str], set[str]]:
        """(Orthanc ids of source instances already handled, SOP Instance UIDs of BraNet's outputs) of a study."""
        handled = {r["instance_id"] for r in self._query(
            "SELECT instance_id FROM instances WHERE study_id = ?", (study_id,))}
        ours = {r["sop_uid"] for r in self._query("SELECT sop_uid FROM outputs WHERE study_id = ?", (study_id,))}
        return handled, ours

    def new_instances(self, study_id: str, instances: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """The (instance id, SOP UID) pairs that are neither handled (or planned) already nor made by BraNet."""
        handled, ours = self.known_instances(study_id)
        return [(iid, sop) for iid, sop in instances if iid not in handled and sop not in ours]

    def instances_to_analyse(self, study_id: str, instances: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """For a worker: instances without a decision yet (new ones, and those an interrupted run had planned)."""
        decided = {r["instance_id"] for r in self._query(
            "SELECT instance_id FROM instances WHERE study_id = ? AND state != ?", (study_id, PENDING))}
        ours = {r["sop_uid"] for r in self._query("SELECT sop_uid FROM outputs WHERE study_id = ?", (study_id,))}
        return [(iid, sop) for iid, sop in instances if iid not in decided and sop not in ours]

    def plan_instances(self, study_id: str, instances: Iterable[tuple[str, str]]) -> None:
        """Mark instances as taken by the current run, so a stable event in the meantime does not queue them."""
        with self._tx() as db:
            db.executemany("INSERT OR IGNORE INTO instances (instance_id, study_id, sop_uid, state) VALUES (?, ?, ?, ?)",
                           [(iid, study_id, sop, PENDING) for iid, sop in instances])

    def record_outputs(self, outputs: Sequence[OutputRecord]) -> None:
        """Remember our outputs' SOP Instance UIDs before they are stored, so their arrival never looks new."""
        now = time.time()
        with self._tx() as db:
            db.executemany("INSERT OR IGNORE INTO outputs (sop_uid, study_id, source_instance, kind, created_at) "
                           "VALUES (?, ?, ?, ?, ?)",
                           [(o.sop_uid, o.study_id, o.source_instance, o.kind, now) for o in outputs])

    def output_stored(self, sop_uid: str, instance_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE outputs SET stored = 1, instance_id = ?, stored_at = ? WHERE sop_uid = ?",
                       (instance_id, time.time(), sop_uid))

    def record_instance(self, record: InstanceRecord) -> None:
        """Record the decision for one source instance (its outputs, if any, are stored by then)."""
        if record.status is None:
            raise ValueError("record_instance() wants a decision (a Status), not a planned instance")
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO instances (instance_id, study_id, sop_uid, state, reason, modality, "
                       "model_version, images, analysed_at, timings) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (record.instance_id, record.study_id, record.sop_uid, record.status.value, record.reason,
                        record.modality, record.model_version, json.dumps(record.images),
                        record.analysed_at or time.time(), json.dumps(record.timings)))

    def instances(self, study_id: str) -> list[InstanceRecord]:
        return [InstanceRecord.from_row(r) for r in self._query(
            "SELECT * FROM instances WHERE study_id = ? ORDER BY analysed_at, instance_id", (study_id,))]

    def outputs(self, study_id: str, stored: bool | None = None) -> list[OutputRecord]:
        if stored is None:
            rows = self._query("SELECT * FROM outputs WHERE study_id = ? ORDER BY created_at, sop_uid", (study_id,))
        else:
            rows = self._query("SELECT * FROM outputs WHERE study_id = ? AND stored = ? ORDER BY created_at, sop_uid",
                               (study_id, int(stored)))
        return [OutputRecord.from_row(r) for r in rows]

    def forget_results(self, study_id: str) -> None:
        """Drop every instance decision and output record of a study (before a forced re-analysis)."""
        with self._tx() as db:
            db.execute("DELETE FROM instances WHERE study_id = ?", (study_id,))
            db.execute("DELETE FROM outputs WHERE study_id = ?", (study_id,))

    # --- forwarding ------------------------------------------------------------------------------------------------
    def queue_forwards(self, study_id: str, destinations: Sequence[str], whole_study: bool) -> list[int]:
        """Hand the study's stored, not yet forwarded outputs to the forwarder (one forward per destination).

        Done in one transaction with flagging the outputs, so a crash never forwards twice nor forgets one."""
        now = time.time()
        ids: list[int] = []
        with self._tx() as db:
            rows = db.execute("SELECT sop_uid, instance_id FROM outputs WHERE study_id = ? AND stored = 1 "
                              "AND forward_queued = 0 ORDER BY created_at, sop_uid", (study_id,)).fetchall()
            if not rows:
                return ids
            db.execute("UPDATE outputs SET forward_queued = 1 WHERE study_id = ? AND stored = 1", (study_id,))
            resources = [study_id] if whole_study else [r["instance_id"] for r in rows]
            for destination in destinations:
                cursor = db.execute(
                    "INSERT INTO forwards (study_id, destination, resources, state, next_attempt_at, created_at, "
                    "updated_at) VALUES (?, ?, ?, ?, 0, ?, ?)",
                    (study_id, destination, json.dumps(resources), ForwardState.PENDING.value, now, now))
                ids.append(int(cursor.lastrowid))
        return ids

    def forwards(self, states: Iterable[ForwardState] | None = None, study_id: str | None = None,
                 limit: int = 100) -> list[ForwardRecord]:
        sql, params = "SELECT * FROM forwards WHERE 1 = 1", []
        if states:
            wanted = [s.value for s in states]
            sql += f" AND state IN ({','.join('?' * len(wanted))})"
            params += wanted
        if study_id is not None:
            sql += " AND study_id = ?"
            params.append(study_id)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        return [ForwardRecord.from_row(r) for r in self._query(sql, params)]

    def due_forwards(self, now: float | None = None) -> list[ForwardRecord]:
        now = time.time() if now is None else now
        return [ForwardRecord.from_row(r) for r in self._query(
            "SELECT * FROM forwards WHERE state = ? AND next_attempt_at <= ? ORDER BY id",
            (ForwardState.PENDING.value, now))]

    def forward_sending(self, forward_id: int, job_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE forwards SET state = ?, job_id = ?, attempts = attempts + 1, updated_at = ? "
                       "WHERE id = ?", (ForwardState.SENDING.value, job_id, time.time(), forward_id))

    def forward_sent(self, forward_id: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE forwards SET state = ?, error = '', updated_at = ? WHERE id = ?",
                       (ForwardState.SENT.value, time.time(), forward_id))

    def forward_retry(self, forward_id: int, error: str, max_attempts: int, delay: float, max_delay: float,
                      count_attempt: bool = False) -> ForwardState:
        """A store attempt failed: try again after an exponential backoff, or give up after `max_attempts`."""
        now = time.time()
        with self._tx() as db:
            if count_attempt:
                db.execute("UPDATE forwards SET attempts = attempts + 1 WHERE id = ?", (forward_id,))
            row = db.execute("SELECT attempts, study_id, destination FROM forwards WHERE id = ?",
                             (forward_id,)).fetchone()
            if row is None:
                return ForwardState.FAILED
            attempts = int(row["attempts"])
            if max_attempts and attempts >= max_attempts:
                db.execute("UPDATE forwards SET state = ?, error = ?, job_id = '', updated_at = ? WHERE id = ?",
                           (ForwardState.FAILED.value, error, now, forward_id))
                self._event(db, "error", row["study_id"],
                            f"forwarding to {row['destination']} failed after {attempts} attempts: {error}", now)
                return ForwardState.FAILED
            wait = min(max_delay, delay * (2 ** max(attempts - 1, 0)))
            db.execute("UPDATE forwards SET state = ?, error = ?, job_id = '', next_attempt_at = ?, updated_at = ? "
                       "WHERE id = ?", (ForwardState.PENDING.value, error, now + wait, now, forward_id))
            return ForwardState.PENDING

    def forward_counts(self) -> dict[str, int]:
        counts = {state.value: 0 for state in ForwardState}
        for row in self._query("SELECT state, COUNT(*) AS n FROM forwards GROUP BY state"):
            counts[row["state"]] = int(row["n"])
        return counts

    # --- events and counters ---------------------------------------------------------------------------------------
    @staticmethod
    def _event(db: sqlite3.Connection, level: str, study_id: str, message: str, now: float) -> None:
        db.execute("INSERT INTO events (at, level, study_id, message) VALUES (?, ?, ?, ?)",
                   (now, level, study_id, message))
        db.execute("DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?", (MAX_EVENTS,))

    def event(self, level: str, study_id: str, message: str) -> None:
        with self._tx() as db:
            self._event(db, level, study_id, message, time.time())

    def events(self, levels: Iterable[str] = ("error", "warning"), limit: int = 20) -> list[dict[str, Any]]:
        wanted = list(levels)
        rows = self._query(f"SELECT * FROM events WHERE level IN ({','.join('?' * len(wanted))}) "
                           "ORDER BY id DESC LIMIT ?", (*wanted, limit))
        return [dict(r) for r in rows]

    def bump(self, name: str, by: int = 1) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO counters (name, value) VALUES (?, ?) "
                       "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, by))

    def counters(self) -> dict[str, int]:
        return {r["name"]: int(r["value"]) for r in self._query("SELECT name, value FROM counters")}
