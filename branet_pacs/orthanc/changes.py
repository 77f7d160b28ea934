"""Turn Orthanc's durable change log (/changes) into queued studies, resuming from the last handled sequence.

Orthanc's plugin callbacks are an in-memory queue, lost when Orthanc dies; /changes is durable. So the plugin's
callback only *wakes* the feed, and the feed reads /changes from the last sequence it handled (kept in an Orthanc
global property):

- while running, every StableStudy change is a candidate;
- after a restart, every study touched since the watermark (new instance/series/study or stable study) is a
  candidate, because a study that was still receiving when Orthanc died never gets its StableStudy change.

So the persisted watermark lags the in-memory cursor: a change is "safe" (its study's stable event, if any, has
been handled) only once it was seen more than `hold` seconds ago (StableAge plus a margin); the watermark only
moves over safe changes. A crash therefore replays every change of a study that might not have become stable.

A candidate is queued only if it has instances that are neither already handled nor made by BraNet: an event
caused by our own SEG/SR (or by nothing new at all) is ignored and counted.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from branet_pacs.orthanc.rest import OrthancApi, OrthancError
from branet_pacs.orthanc.store import ServiceStore

log = logging.getLogger(__name__)

PAGE = 200
TOUCHING_CHANGES = {"NewInstance", "NewSeries", "NewStudy", "StableStudy", "StableSeries"}
_PARENT_STUDY = {"Instance": "/instances/{}/study", "Series": "/series/{}/study"}


class ChangeFeed:
    def __init__(self, api: OrthancApi, store: ServiceStore, get_watermark: Callable[[], int | None],
                 set_watermark: Callable[[int], None], analyse_existing: bool = False, hold: float = 70.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.store = store
        self._get_watermark = get_watermark
        self._set_watermark = set_watermark
        self.analyse_existing = analyse_existing
        self.hold = hold
        self.clock = clock
        self.watermark: int | None = None     # persisted: every change up to it is handled for good
        self.cursor: int | None = None        # in memory: every change up to it has been read
        self._unsafe: deque[tuple[int, float]] = deque()   # (seq, seen at) of changes read but not yet safe

    # --- start-up --------------------------------------------------------------------------------------------------
    def catch_up(self) -> list[tuple[str, str]]:
        """Consider every study touched since the stored watermark; returns (study id, decision) pairs."""
        last = int(self.api.get_json("/changes?last")["Last"])
        stored = self._get_watermark()
        decisions: list[tuple[str, str]] = []
        if stored is None:
            if self.analyse_existing:
                for study_id in self.api.get_json("/studies"):
                    decisions.append((study_id, self.consider(study_id, "existing study")))
            else:
                log.info("first start: changes before sequence %d are not analysed", last)
        else:
            studies: dict[str, None] = {}
            since = stored
            while since < last:
                page = self.api.get_json(f"/changes?since={since}&limit={PAGE}")
                if not page["Changes"]:
                    break
                for change in page["Changes"]:
                    if change["ChangeType"] in TOUCHING_CHANGES:
                        study_id = self._study_of(change["ResourceType"], change["ID"])
                        if study_id:
                            studies[study_id] = None
                since = max(int(c["Seq"]) for c in page["Changes"])
                if page.get("Done"):
                    break
            for study_id in studies:
                decisions.append((study_id, self.consider(study_id, "replayed after restart")))
            if studies:
                log.info("replayed changes %d..%d: %d studies considered", stored, last, len(studies))
        self._set_watermark(last)
        self.watermark = self.cursor = last
        return decisions

    def _study_of(self, resource_type: str, resource_id: str) -> str | None:
        if resource_type == "Study":
            return resource_id
        uri = _PARENT_STUDY.get(resource_type)
        if uri is None:
            return None
        try:
            return str(self.api.get_json(uri.format(resource_id))["ID"])
        except OrthancError as exc:
            if exc.not_found:
                return None  # deleted since
            raise

    # --- steady state ----------------------------------------------------------------------------------------------
    def poll(self) -> list[tuple[str, str]]:
        """Handle the StableStudy changes after the cursor; returns (study id, decision) pairs."""
        if self.cursor is None:
            raise RuntimeError("catch_up() must run first")
        decisions: list[tuple[str, str]] = []
        while True:
            page = self.api.get_json(f"/changes?since={self.cursor}&limit={PAGE}")
            changes = page["Changes"]
            for change in changes:
                if change["ChangeType"] == "StableStudy":
                    decisions.append((change["ID"], self.consider(change["ID"], "stable")))
                self._unsafe.append((int(change["Seq"]), self.clock()))
                self.cursor = int(change["Seq"])
            if page.get("Done", True) or not changes:
                break
        self._advance()
        return decisions

    def _advance(self) -> None:
        """Persist the watermark over the changes read more than `hold` seconds ago."""
        now = self.clock()
        safe = None
        while self._unsafe and now - self._unsafe[0][1] >= self.hold:
            safe = self._unsafe.popleft()[0]
        if safe is not None and (self.watermark is None or safe > self.watermark):
            self._set_watermark(safe)
            self.watermark = safe

    # --- the decision ----------------------------------------------------------------------------------------------
    def consider(self, study_id: str, why: str) -> str:
        """Queue `study_id` when it holds instances BraNet has not handled and did not make itself."""
        try:
            instances = self.api.get_json(f"/studies/{study_id}/instances")
        except OrthancError as exc:
            if exc.not_found:
                return "gone"
            raise
        pairs = [(str(i["ID"]), str(i.get("MainDicomTags", {}).get("SOPInstanceUID", ""))) for i in instances]
        new = self.store.new_instances(study_id, pairs)
        if not new:
            self.store.bump("ignored_events")
            log.info("study %s (%s): no new instances (only BraNet outputs or already handled), ignored",
                     study_id, why)
            return "ignored"
        try:
            study_uid = str(self.api.get_json(f"/studies/{study_id}")["MainDicomTags"].get("StudyInstanceUID", ""))
        except OrthancError as exc:
            if exc.not_found:
                return "gone"
            raise
        decision = self.store.enqueue(study_id, study_uid)
        self.store.bump("queued_events")
        log.info("study %s (%s, StudyInstanceUID %s): %d new instance(s), %s", study_id, why, study_uid, len(new),
                 decision)
        return decision
