"""`BraNetNode`: what the Orthanc plugin drives. One maintenance thread reads the change log, forwards results
and supervises the workers; REST requests under /branet/ are answered from the service database.

Standard library only: this runs inside Orthanc's embedded interpreter, which must never import torch.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from branet_pacs import __version__
from branet_pacs.orthanc.changes import ChangeFeed
from branet_pacs.orthanc.forward import Forwarder
from branet_pacs.orthanc.incoming import refusal
from branet_pacs.orthanc.rest import OrthancApi, OrthancError
from branet_pacs.orthanc.settings import ServiceSettings
from branet_pacs.orthanc.status import (
    MAX_METADATA_REASON,
    METADATA_REASON,
    METADATA_STATUS,
    METADATA_TIME,
    ForwardState,
)
from branet_pacs.orthanc.store import Retry, ServiceStore
from branet_pacs.orthanc.supervisor import WorkerSupervisor
from branet_pacs.orthanc.viewer import study_url
from branet_pacs.types import StudyState, breast_results

log = logging.getLogger(__name__)

ORTHANC_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")
THUMBNAIL_NAME = re.compile(r"^[0-9A-Za-z.]+_\d+_\d+\.png$")
HEAVY_MODULES = ("torch", "numpy", "pydicom")
STABLE_MARGIN = 10.0   # seconds beyond StableAge before a change counts as handled for good (see changes.py)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    allowed: str = ""   # for 405

    @classmethod
    def json(cls, value: Any, status: int = 200) -> "Response":
        return cls(status, json.dumps(value, indent=2).encode("utf-8"))

    @classmethod
    def error(cls, status: int, message: str) -> "Response":
        return cls.json({"error": message}, status)


class BraNetNode:
    def __init__(self, api: OrthancApi, settings: ServiceSettings, get_watermark: Callable[[], int | None],
                 set_watermark: Callable[[int], None], start_workers: bool = True) -> None:
        self.api = api
        self.settings = settings
        self.store = ServiceStore(settings.store_path)
        self.feed = ChangeFeed(api, self.store, get_watermark, set_watermark, settings.analyse_existing_studies,
                               hold=settings.stable_age + STABLE_MARGIN)
        self.forwarder = Forwarder(api, self.store, settings.forward)
        self.supervisor = WorkerSupervisor(settings, self.store, on_retries=self._record_failures)
        self.start_workers = start_workers
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        self.started_at: float | None = None
        self.last_error = ""

    # --- lifecycle -------------------------------------------------------------------------------------------------
    def _acquire_lock(self) -> None:
        self.settings.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.settings.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(f"{self.settings.state_dir} is in use by another BraNet service") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def start(self) -> None:
        """Recover interrupted studies, start the workers and the maintenance thread."""
        if self._thread is not None:
            return
        self._acquire_lock()
        retries = self.store.recover_running((), "interrupted: Orthanc or the worker stopped during analysis",
                                             self.settings.max_attempts, 0.0)
        for retry in retries:
            log.warning("study %s found running after a restart: %s", retry.study_id, retry.reason)
        self._record_failures(retries)
        self.started_at = time.time()
        self._thread = threading.Thread(target=self._run, name="branet-maintenance", daemon=True)
        self._thread.start()

    def _record_failures(self, retries: list[Retry]) -> None:
        """Studies that ran out of attempts get their failed state into Orthanc's metadata too."""
        for retry in retries:
            if retry.state is not StudyState.FAILED:
                continue
            values = {METADATA_STATUS: StudyState.FAILED.value, METADATA_REASON: retry.reason[:MAX_METADATA_REASON],
                      METADATA_TIME: datetime.now(timezone.utc).isoformat(timespec="seconds")}
            try:
                for name, value in values.items():
                    self.api.put_text(f"/studies/{retry.study_id}/metadata/{name}", value)
            except OrthancError as exc:
                log.warning("study %s: failed state not written to Orthanc metadata: %s", retry.study_id, exc)

    def refuse_incoming(self, tags: dict[str, Any], size: int) -> str:
        """The C-STORE filter's rule (`incoming.refusal`); a refusal is logged and kept in recent_errors, naming the
        instance by its UIDs only, never the patient."""
        reason = refusal(tags, size, self.settings.incoming_limits)
        if reason:
            uids = ", ".join(f"{k} {tags[k]}" for k in ("SOPInstanceUID", "StudyInstanceUID") if tags.get(k))
            message = f"C-STORE refused ({uids or 'no identifying UID'}): {reason}"
            log.warning("%s", message)
            self.store.event("error", "", message)
            self.store.bump("refused_instances")
        return reason

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        if self.start_workers:
            self.supervisor.stop()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _run(self) -> None:
        # Workers are started (and restarted) from this long-lived thread: PR_SET_PDEATHSIG fires when the thread
        # that started a child ends, so it must not be a short-lived callback thread.
        if self.start_workers:
            self.supervisor.start()
        caught_up = False
        while not self._stop.is_set():
            try:
                if not caught_up:
                    self.feed.catch_up()
                    caught_up = True
                self.feed.poll()
                self.forwarder.step()
                self.last_error = ""
            except Exception as exc:  # noqa: BLE001 - keep the loop alive; Orthanc may be shutting down
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("maintenance step failed: %s", self.last_error)
            try:
                if self.start_workers:
                    self.supervisor.check()
            except Exception as exc:  # noqa: BLE001
                log.error("worker supervision failed: %s: %s", type(exc).__name__, exc)
            self._wake.wait(self.settings.poll_interval)
            self._wake.clear()

    # --- REST ------------------------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, body: bytes = b"") -> Response:
        """Dispatch /branet/{path}."""
        parts = [p for p in path.split("/") if p]
        try:
            if parts == ["status"]:
                return self._only(method, "GET") or Response.json(self.status())
            if len(parts) >= 2 and parts[0] == "studies":
                study_id = parts[1]
                if not ORTHANC_ID.match(study_id):
                    return Response.error(404, "not an Orthanc study id")
                if len(parts) == 2:
                    return self._only(method, "GET") or self._study_response(study_id)
                if parts[2:] == ["analyze"]:
                    return self._only(method, "POST") or self._analyze(study_id)
                if len(parts) == 4 and parts[2] == "thumbnails":
                    return self._only(method, "GET") or self._thumbnail(study_id, parts[3])
            return Response.error(404, f"unknown BraNet route /branet/{path}")
        except OrthancError as exc:
            return Response.error(502 if exc.status in (0, 500) else exc.status, str(exc))

    @staticmethod
    def _only(method: str, allowed: str) -> Response | None:
        return None if method == allowed else Response(405, allowed=allowed)

    def status(self) -> dict[str, Any]:
        counts = self.store.state_counts()
        return {
            "service": "BraNet-PACS",
            "version": __version__,
            "started_at": self.started_at,
            "queue": {"queued": counts[StudyState.QUEUED.value], "running": counts[StudyState.RUNNING.value],
                      "delayed": sum(1 for s in self.store.studies(1000, [StudyState.QUEUED])
                                     if s.next_attempt_at > time.time())},
            "studies": counts,
            "workers": self.supervisor.describe(),
            "forwarding": {
                "destinations": list(self.settings.forward.destinations),
                "whole_study": self.settings.forward.whole_study,
                "counts": self.store.forward_counts(),
                "open": [f.to_json() for f in self.store.forwards(
                    states=[ForwardState.PENDING, ForwardState.SENDING, ForwardState.FAILED], limit=50)],
            },
            "counters": self.store.counters(),
            "changes": {"read": self.feed.cursor, "handled_for_good": self.feed.watermark},
            "recent_errors": self.store.events(limit=20),
            "recent_studies": [s.to_json() for s in self.store.studies(20)],
            "maintenance_error": self.last_error,
            "heavy_modules_loaded": sorted(m for m in HEAVY_MODULES if m in sys.modules),
        }

    def study_detail(self, study_id: str) -> dict[str, Any] | None:
        record = self.store.study(study_id)
        if record is None:
            return None
        outputs = self.store.outputs(study_id)
        by_sop = {o.sop_uid: o for o in outputs}
        instances = []
        for inst in self.store.instances(study_id):
            value = inst.to_json()
            for image in value["images"]:
                for kind in ("seg", "sr", "cad"):
                    sop = image.get(kind)
                    out = by_sop.get(sop) if sop else None
                    image[f"{kind}_instance"] = out.instance_id if out and out.stored else None
                for finding in image.get("findings", []):
                    name = finding.get("thumbnail")
                    finding["thumbnail_url"] = f"/branet/studies/{study_id}/thumbnails/{name}" if name else None
            instances.append(value)
        views = [(record.study_uid, image.get("modality", ""), image.get("laterality"),
                  [(f["label"], f["p_malignant"]) for f in image.get("findings", [])])
                 for value in instances for image in value["images"] if "error" not in image]
        return {
            "study": record.to_json(),
            "viewer_url": study_url(record.study_uid),
            "breasts": [breast.as_json() for breast in breast_results(views)],
            "instances": instances,
            "outputs": [{"sop_uid": o.sop_uid, "kind": o.kind, "source_instance": o.source_instance,
                         "instance_id": o.instance_id, "stored": o.stored, "stored_at": o.stored_at} for o in outputs],
            "forwards": [f.to_json() for f in self.store.forwards(study_id=study_id)],
            "attempts": self.store.attempts(study_id),
        }

    def _study_response(self, study_id: str) -> Response:
        detail = self.study_detail(study_id)
        if detail is None:
            self.api.get(f"/studies/{study_id}")  # 404 when Orthanc does not know it either
            return Response.json({"study": {"study_id": study_id, "state": "not analysed"}, "instances": [],
                                  "outputs": [], "forwards": []})
        return Response.json(detail)

    def _analyze(self, study_id: str) -> Response:
        study = self.api.get_json(f"/studies/{study_id}")  # 404 for an unknown study
        uid = str(study.get("MainDicomTags", {}).get("StudyInstanceUID", ""))
        decision = self.store.enqueue(study_id, uid, force=True)
        self.store.event("info", study_id, f"re-analysis requested ({decision})")
        log.info("study %s: re-analysis requested (%s)", study_id, decision)
        return Response.json({"study": study_id, "decision": decision}, status=200)

    def _thumbnail(self, study_id: str, name: str) -> Response:
        if not THUMBNAIL_NAME.match(name):
            return Response.error(404, "no such thumbnail")
        path = self.settings.thumbnails_dir / study_id / name
        if not path.is_file():
            return Response.error(404, "no such thumbnail")
        return Response(200, path.read_bytes(), "image/png")
