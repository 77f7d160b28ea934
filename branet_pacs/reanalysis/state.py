"""The local state of re-analysis runs: one SQLite file, one row per (source, study).

A run first lists matching studies into the file (so the list never has to fit in memory and the progress bar
knows its total), then works through the rows of that listing that are not done yet. A row is done when it was
analysed or skipped under the current model key; anything else (queued, running when the run was killed, error,
failed) is picked up again by the next run. Only the driver process writes; every change is committed at once.
States are `branet_pacs.types.StudyState` values, the node's vocabulary.
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from branet_pacs.reanalysis.archive import StudyRef
from branet_pacs.types import StudyState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    dest TEXT NOT NULL,
    model_key TEXT NOT NULL,
    arguments TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    summary TEXT
);
CREATE TABLE IF NOT EXISTS studies (
    source TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    study_date TEXT NOT NULL DEFAULT '',
    modalities TEXT NOT NULL DEFAULT '',
    listed_run INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'queued',
    reason TEXT NOT NULL DEFAULT '',
    model_key TEXT NOT NULL DEFAULT '',
    outputs INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL,
    PRIMARY KEY (source, study_uid)
);
CREATE INDEX IF NOT EXISTS studies_by_run ON studies (listed_run, status);
"""


class StateBusy(RuntimeError):
    """Another process holds the state file (two runs of one state file would redo each other's work)."""


DONE = (StudyState.ANALYSED.value, StudyState.SKIPPED.value)
# State files written before the node and re-analysis shared one vocabulary said "pending" for "queued".
_MIGRATION = "UPDATE studies SET status = 'queued' WHERE status = 'pending'"


@dataclass(frozen=True)
class StudyRow:
    rowid: int
    study_uid: str
    study_date: str
    modalities: tuple[str, ...]
    status: StudyState
    attempts: int


class StateStore:
    """Open (create) the state file; use as a context manager or call close()."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path.with_name(self.path.name + ".lock"), "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StateBusy(f"another run is using the state file {self.path}") from None
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.execute(_MIGRATION)

    def __enter__(self) -> "StateStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()
        self._lock.close()   # releases the lock

    # --- runs ---------------------------------------------------------------------------------------------------
    def begin_run(self, source: str, dest: str, model_key: str, arguments: dict) -> int:
        cursor = self._db.execute(
            "INSERT INTO runs (source, dest, model_key, arguments, started) VALUES (?, ?, ?, ?, ?)",
            (source, dest, model_key, json.dumps(arguments, sort_keys=True), time.time()))
        return int(cursor.lastrowid)

    def finish_run(self, run: int, summary: dict) -> None:
        self._db.execute("UPDATE runs SET finished = ?, summary = ? WHERE id = ?",
                         (time.time(), json.dumps(summary, sort_keys=True), run))

    # --- listing ------------------------------------------------------------------------------------------------
    def record_listed(self, run: int, source: str, studies: Iterator[StudyRef], batch: int = 500) -> int:
        """Insert or refresh the listed studies (their status is kept); returns how many were listed."""
        count = 0
        rows: list[tuple] = []

        def flush() -> None:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO studies (source, study_uid, study_date, modalities, listed_run, updated) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (source, study_uid) DO UPDATE SET "
                "study_date = excluded.study_date, modalities = excluded.modalities, "
                "listed_run = excluded.listed_run", rows)
            self._db.execute("COMMIT")
            rows.clear()

        for ref in studies:
            rows.append((source, ref.study_uid, ref.study_date, "\\".join(ref.modalities), run, time.time()))
            count += 1
            if len(rows) >= batch:
                flush()
        if rows:
            flush()
        return count

    def count(self, run: int, source: str, model_key: str, force: bool) -> tuple[int, int]:
        """(studies listed in this run, of which already done under `model_key`; 0 done when forced)."""
        listed = self._db.execute("SELECT COUNT(*) FROM studies WHERE source = ? AND listed_run = ?",
                                  (source, run)).fetchone()[0]
        if force:
            return int(listed), 0
        done = self._db.execute(
            f"SELECT COUNT(*) FROM studies WHERE source = ? AND listed_run = ? AND model_key = ? "
            f"AND status IN ({','.join('?' * len(DONE))})", (source, run, model_key, *DONE)).fetchone()[0]
        return int(listed), int(done)

    def todo(self, run: int, source: str, model_key: str, force: bool, chunk: int = 256) -> Iterator[StudyRow]:
        """Rows of this run's listing still to do, in listing order, read a chunk at a time."""
        last = 0
        done_clause = "" if force else \
            f" AND NOT (model_key = ? AND status IN ({','.join('?' * len(DONE))}))"
        params_done: tuple = () if force else (model_key, *DONE)
        while True:
            rows = self._db.execute(
                "SELECT rowid, study_uid, study_date, modalities, status, attempts FROM studies "
                f"WHERE source = ? AND listed_run = ? AND rowid > ?{done_clause} ORDER BY rowid LIMIT ?",
                (source, run, last, *params_done, chunk)).fetchall()
            if not rows:
                return
            for rowid, uid, date, modalities, status, attempts in rows:
                last = rowid
                yield StudyRow(rowid, uid, date, tuple(m for m in modalities.split("\\") if m),
                               StudyState(status), attempts)

    # --- per-study status ---------------------------------------------------------------------------------------
    def mark(self, source: str, study_uid: str, status: StudyState, reason: str = "", model_key: str = "",
             outputs: int = 0) -> None:
        attempt = 1 if status is StudyState.RUNNING else 0
        self._db.execute(
            "UPDATE studies SET status = ?, reason = ?, model_key = ?, outputs = ?, attempts = attempts + ?, "
            "updated = ? WHERE source = ? AND study_uid = ?",
            (status.value, reason, model_key, outputs, attempt, time.time(), source, study_uid))

    def status(self, source: str, study_uid: str) -> tuple[StudyState, str] | None:
        row = self._db.execute("SELECT status, reason FROM studies WHERE source = ? AND study_uid = ?",
                               (source, study_uid)).fetchone()
        return None if row is None else (StudyState(row[0]), row[1])

    def counts(self, source: str) -> dict[str, int]:
        """Studies per status for `source` (all runs)."""
        return {status: int(n) for status, n in self._db.execute(
            "SELECT status, COUNT(*) FROM studies WHERE source = ? GROUP BY status", (source,))}
