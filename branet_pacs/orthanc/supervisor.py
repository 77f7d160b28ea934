"""Start, watch and restart the worker processes (from the plugin, or from any long-lived parent).

A worker that exits (crash, kill -9, out of memory) is replaced; the study it held is retried, or failed once its
attempts are used up. A worker busy longer than the study timeout is killed (which counts as an attempt). Workers
die with their parent (PR_SET_PDEATHSIG, set by the worker itself), so a killed Orthanc leaves no orphan behind.
Standard library only.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from branet_pacs.orthanc.settings import ServiceSettings
from branet_pacs.orthanc.store import Retry, ServiceStore

log = logging.getLogger(__name__)

SETTINGS_ENV = "BRANET_SERVICE_SETTINGS"
QUICK_EXIT = 10.0        # a worker dying sooner than this after its start is crash-looping...
MAX_RESTART_DELAY = 30.0  # ...and is restarted with a growing delay, up to this


def settings_to_env(settings: ServiceSettings) -> str:
    return json.dumps(asdict(settings))


def settings_from_env(text: str) -> ServiceSettings:
    from branet_pacs.orthanc.incoming import IncomingLimits
    from branet_pacs.orthanc.settings import ForwardSettings
    values = json.loads(text)
    values["forward"] = ForwardSettings(**{**values["forward"],
                                           "destinations": tuple(values["forward"]["destinations"])})
    values["incoming_limits"] = IncomingLimits(**values.get("incoming_limits", {}))
    return ServiceSettings(**values)


@dataclass
class WorkerHandle:
    slot: int
    token: str
    process: subprocess.Popen
    started_at: float
    restarts: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class _Slot:
    restarts: int = 0
    quick_exits: int = 0
    not_before: float = 0.0
    handle: WorkerHandle | None = None
    last_exit: str = ""


class WorkerSupervisor:
    def __init__(self, settings: ServiceSettings, store: ServiceStore, extra_env: dict[str, str] | None = None,
                 on_retries: Callable[[list[Retry]], None] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.on_retries = on_retries
        self.extra_env = dict(extra_env or {})
        self.slots = [_Slot() for _ in range(settings.workers)]
        self._stopping = False

    # --- lifecycle -------------------------------------------------------------------------------------------------
    def command(self, token: str) -> list[str]:
        return [self.settings.python, "-m", "branet_pacs.orthanc.worker", "--token", token,
                "--parent-pid", str(os.getpid())]

    def _spawn(self, slot_index: int) -> WorkerHandle:
        slot = self.slots[slot_index]
        token = f"w{slot_index}-{secrets.token_hex(4)}"
        env = dict(os.environ)
        env.update(self.extra_env)
        env[SETTINGS_ENV] = settings_to_env(self.settings)
        env["PYTHONPATH"] = self.settings.repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        process = subprocess.Popen(self.command(token), env=env, cwd=self.settings.repo, close_fds=True,
                                   stdin=subprocess.DEVNULL, start_new_session=False)
        handle = WorkerHandle(slot=slot_index, token=token, process=process, started_at=time.time(),
                              restarts=slot.restarts)
        slot.handle = handle
        log.info("worker %s started (pid %d)", token, process.pid)
        return handle

    def start(self) -> None:
        for index in range(len(self.slots)):
            self._spawn(index)

    def check(self) -> None:
        """Reap dead workers (retrying their studies), restart them, and enforce the study timeout."""
        if self._stopping:
            return
        now = time.time()
        for index, slot in enumerate(self.slots):
            handle = slot.handle
            if handle is not None:
                code = handle.process.poll()
                if code is None:
                    continue
                self._reap(slot, handle, code, now)
            if slot.handle is None and now >= slot.not_before:
                slot.restarts += 1
                self._spawn(index)
        self._enforce_timeout(now)

    def _reap(self, slot: _Slot, handle: WorkerHandle, code: int, now: float) -> None:
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        slot.last_exit = f"worker {handle.token} (pid {handle.pid}) {how}"
        slot.handle = None
        retries = self.store.release_worker(handle.token, f"worker {how} while analysing",
                                            self.settings.max_attempts, self.settings.retry_delay)
        for retry in retries:
            log.warning("study %s: %s", retry.study_id, retry.reason)
        if retries and self.on_retries is not None:
            self.on_retries(retries)
        self.store.event("warning" if code in (0, -signal.SIGTERM) else "error", "", slot.last_exit)
        if now - handle.started_at < QUICK_EXIT:
            slot.quick_exits += 1
            delay = min(MAX_RESTART_DELAY, 2.0 ** slot.quick_exits)
        else:
            slot.quick_exits = 0
            delay = 0.0
        slot.not_before = now + delay
        log.warning("%s; restarting in %.0f s", slot.last_exit, delay)

    def _enforce_timeout(self, now: float) -> None:
        tokens = {slot.handle.token: slot.handle for slot in self.slots if slot.handle is not None}
        for study in self.store.running():
            handle = tokens.get(study.worker)
            if handle is None or study.started_at is None:
                continue
            if now - study.started_at > self.settings.study_timeout:
                log.error("study %s: worker %s busy for more than %.0f s, killing it", study.study_id, handle.token,
                          self.settings.study_timeout)
                self.store.event("error", study.study_id,
                                 f"study timeout ({self.settings.study_timeout:.0f} s): worker {handle.token} killed")
                handle.process.kill()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every worker (each gives its study back without counting the attempt), then SIGKILL."""
        self._stopping = True
        handles = [slot.handle for slot in self.slots if slot.handle is not None]
        for handle in handles:
            if handle.process.poll() is None:
                handle.process.terminate()
        deadline = time.time() + timeout
        for handle in handles:
            try:
                handle.process.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                handle.process.kill()
                handle.process.wait(5)
        for slot in self.slots:
            slot.handle = None

    # --- status ----------------------------------------------------------------------------------------------------
    def describe(self) -> list[dict[str, object]]:
        running = {study.worker: study.study_id for study in self.store.running()}
        out = []
        for index, slot in enumerate(self.slots):
            handle = slot.handle
            out.append({
                "slot": index,
                "pid": handle.pid if handle else None,
                "token": handle.token if handle else None,
                "alive": bool(handle and handle.process.poll() is None),
                "started_at": handle.started_at if handle else None,
                "restarts": slot.restarts,
                "study": running.get(handle.token) if handle else None,
                "last_exit": slot.last_exit,
            })
        return out
