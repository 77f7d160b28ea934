"""Forward BraNet's outputs (or whole studies) to DICOM modalities with Orthanc's asynchronous store jobs.

Each forward is one (resources, destination) pair in the service database: submitted as a job with
POST /modalities/{name}/store, followed with GET /jobs/{id}, retried with exponential backoff while the
destination is down (a job that fails, or vanished because Orthanc restarted), and marked failed after
`max_attempts`. Standard library only (runs on a plugin thread).
"""

from __future__ import annotations

import logging

from branet_pacs.orthanc.rest import OrthancApi, OrthancError
from branet_pacs.orthanc.settings import ForwardSettings
from branet_pacs.orthanc.status import ForwardState
from branet_pacs.orthanc.store import ForwardRecord, ServiceStore

log = logging.getLogger(__name__)

_RUNNING_JOB_STATES = {"Pending", "Running", "Retry", "Paused"}


class Forwarder:
    def __init__(self, api: OrthancApi, store: ServiceStore, settings: ForwardSettings) -> None:
        self.api = api
        self.store = store
        self.settings = settings

    def step(self) -> None:
        """Follow running jobs, then submit the forwards that are due."""
        for forward in self.store.forwards(states=[ForwardState.SENDING], limit=1000):
            self._follow(forward)
        for forward in self.store.due_forwards():
            self._submit(forward)

    def _retry(self, forward: ForwardRecord, error: str, count_attempt: bool = False) -> None:
        s = self.settings
        state = self.store.forward_retry(forward.id, error, s.max_attempts, s.retry_delay, s.retry_max_delay,
                                         count_attempt=count_attempt)
        log.warning("forward %d of study %s to %s: %s (%s)", forward.id, forward.study_id, forward.destination,
                    error, "giving up" if state is ForwardState.FAILED else "will retry")

    def _submit(self, forward: ForwardRecord) -> None:
        body = {"Resources": forward.resources, "Synchronous": False, "Asynchronous": True, "Priority": 0}
        try:
            answer = self.api.post_json(f"/modalities/{forward.destination}/store", body)
        except OrthancError as exc:
            self._retry(forward, f"cannot submit store job: {exc}", count_attempt=True)
            return
        self.store.forward_sending(forward.id, str(answer["ID"]))

    def _follow(self, forward: ForwardRecord) -> None:
        try:
            job = self.api.get_json(f"/jobs/{forward.job_id}")
        except OrthancError as exc:
            if exc.not_found:
                self._retry(forward, "store job lost (Orthanc restarted?)")
                return
            raise
        state = job.get("State", "")
        if state == "Success":
            self.store.forward_sent(forward.id)
            log.info("forward %d of study %s to %s: sent", forward.id, forward.study_id, forward.destination)
        elif state in _RUNNING_JOB_STATES:
            return
        else:
            detail = job.get("ErrorDetails") or job.get("ErrorDescription") or state
            self._retry(forward, f"store job {state.lower()}: {detail}")
