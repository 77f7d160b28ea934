"""The worker process: take a study from the queue, analyse its new breast images, store SEG + SR into Orthanc.

This is the only module of `branet_pacs.orthanc` that loads the core (torch, numpy, pydicom): it runs in its own
process, never inside Orthanc. Per study (`StudyWorker.process`):
  1. a forced re-run first deletes the study's earlier BraNet outputs from Orthanc;
  2. every instance that is neither decided already nor made by BraNet is fetched over REST and analysed by the
     core's unit of work (`Analyzer.analyze_instance`, the same as `branet analyze` and re-analysis); its outputs'
     SOP Instance UIDs are recorded, the outputs stored, then the instance's decision recorded;
  3. the study's verdict (`branet_pacs.types.study_verdict`), model version, time and reason go into Orthanc
     metadata and the service database, and the new outputs are handed to the forwarder.
Output UIDs are deterministic, so a worker killed anywhere in step 2 leaves nothing to repair: the retry analyses the
undecided instance again and stores the same objects, which Orthanc keeps once. A failure of one instance
(unreadable, not decodable, analysis error) is recorded for that instance and the others go on; a failure of the
study (Orthanc unreachable, database error) retries it with backoff, up to MaxAttempts.

Run by the plugin's supervisor: `python -m branet_pacs.orthanc.worker --token T --parent-pid P` with the settings in
$BRANET_SERVICE_SETTINGS (or `--config DIR/orthanc.json`).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

from branet_pacs.orthanc.credentials import load_credentials
from branet_pacs.orthanc.rest import HttpOrthanc, OrthancApi, OrthancError
from branet_pacs.orthanc.settings import ServiceSettings
from branet_pacs.orthanc.status import (
    MAX_METADATA_REASON,
    METADATA_MODEL_VERSION,
    METADATA_REASON,
    METADATA_STATUS,
    METADATA_TIME,
)
from branet_pacs.orthanc.store import InstanceRecord, OutputRecord, ServiceStore, StudyRecord
from branet_pacs.orthanc.supervisor import SETTINGS_ENV, settings_from_env
from branet_pacs.types import InstanceResult, InstanceSummary, Status, StudyState, StudyVerdict, study_verdict

log = logging.getLogger("branet_pacs.orthanc.worker")

IDLE_POLL = 0.3       # seconds between queue polls when idle
PR_SET_PDEATHSIG = 1


class WorkerStopping(Exception):
    """SIGTERM: give the current study back (without counting an attempt) and exit."""


def summaries(records: list[InstanceRecord]) -> list[InstanceSummary]:
    """The decided instances of a study (every run so far, not only the last) as the verdict's input."""
    return [InstanceSummary(r.sop_uid, r.status, r.reason, sum(len(i.get("findings", [])) for i in r.images),
                            r.model_version) for r in records if r.status is not None]


class StudyWorker:
    def __init__(self, api: OrthancApi, store: ServiceStore, settings: ServiceSettings, analyzer: Any,
                 token: str) -> None:
        self.api = api
        self.store = store
        self.settings = settings
        self.analyzer = analyzer
        self.token = token

    def warm_up(self) -> list[str]:
        """Load every model once now, so the first study does not pay for it; returns what is unavailable."""
        missing = self.analyzer.warm_up()
        for line in missing:
            log.warning("model unavailable (images needing it will be recorded as errors): %.300s", line)
        return missing

    # --- one study -------------------------------------------------------------------------------------------------
    def process(self, study: StudyRecord) -> StudyVerdict:
        sid = study.study_id
        log.info("study %s (StudyInstanceUID %s): attempt %d", sid, study.study_uid, study.attempts)
        self._put_metadata(sid, {METADATA_STATUS: StudyState.RUNNING.value})
        if study.force:
            self._discard_outputs(sid)
        try:
            listing = self.api.get_json(f"/studies/{sid}/instances")
        except OrthancError as exc:
            if not exc.not_found:
                raise
            verdict = StudyVerdict(StudyState.SKIPPED, "study deleted from Orthanc before analysis")
            self.store.finish(sid, self.token, verdict.state, verdict.reason, "")
            return verdict
        pairs = [(str(i["ID"]), str(i.get("MainDicomTags", {}).get("SOPInstanceUID", ""))) for i in listing]
        new = self.store.instances_to_analyse(sid, pairs)
        self.store.plan_instances(sid, new)
        for instance_id, sop_uid in new:
            self._analyse_instance(sid, instance_id, sop_uid)
        verdict = study_verdict(summaries(self.store.instances(sid)))
        finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._put_metadata(sid, {METADATA_STATUS: verdict.state.value, METADATA_MODEL_VERSION: verdict.model_version,
                                 METADATA_TIME: finished, METADATA_REASON: verdict.reason[:MAX_METADATA_REASON]})
        if self.settings.forward.destinations:
            self.store.queue_forwards(sid, self.settings.forward.destinations, self.settings.forward.whole_study)
        self.store.finish(sid, self.token, verdict.state, verdict.reason, verdict.model_version)
        log.info("study %s: %s (%d new instance(s)) - %s", sid, verdict.state.value, len(new), verdict.reason)
        return verdict

    def _put_metadata(self, study_id: str, values: dict[str, str]) -> None:
        for name, value in values.items():
            self.api.put_text(f"/studies/{study_id}/metadata/{name}", value)

    def _discard_outputs(self, study_id: str) -> None:
        """Forced re-run: delete earlier BraNet outputs from Orthanc, forget the study's decisions."""
        for output in self.store.outputs(study_id):
            if output.instance_id:
                try:
                    self.api.delete(f"/instances/{output.instance_id}")
                except OrthancError as exc:
                    if not exc.not_found:
                        raise
        self.store.forget_results(study_id)
        thumbnails = self.settings.thumbnails_dir / study_id
        if thumbnails.is_dir():
            for path in thumbnails.iterdir():
                path.unlink(missing_ok=True)
        log.info("study %s: earlier outputs deleted for the re-run", study_id)

    # --- one instance ----------------------------------------------------------------------------------------------
    def _analyse_instance(self, study_id: str, instance_id: str, sop_uid: str) -> None:
        record = InstanceRecord(instance_id=instance_id, study_id=study_id, sop_uid=sop_uid, status=Status.ERROR)
        clock = time.perf_counter()
        try:
            data = self.api.get(f"/instances/{instance_id}/file")
        except OrthancError as exc:
            if not exc.not_found:
                raise
            self.store.record_instance(InstanceRecord(instance_id, study_id, sop_uid, Status.SKIPPED,
                                                      reason="deleted before analysis"))
            return
        timings = {"fetch": time.perf_counter() - clock}
        clock = time.perf_counter()
        name = f"orthanc instance {instance_id}"
        result = self.analyzer.analyze_instance(data, name=name)
        timings["analyse"] = time.perf_counter() - clock
        for image in result.images:
            for stage, seconds in image.timings.items():
                timings[f"pipeline.{stage}"] = timings.get(f"pipeline.{stage}", 0.0) + seconds
        clock = time.perf_counter()
        images = self._describe(record, result)
        self._store_outputs(record, result)
        timings["store"] = time.perf_counter() - clock
        summary = result.summary()
        record = InstanceRecord(
            instance_id=instance_id, study_id=study_id, sop_uid=sop_uid, status=summary.status,
            reason=summary.reason.removeprefix(f"{name}: "), modality=result.modality, images=images,
            model_version=summary.model_version, timings={k: round(v, 4) for k, v in timings.items()})
        self.store.record_instance(record)
        if record.status is Status.ERROR:
            log.warning("study %s: instance %s (SOP %s): %s", study_id, instance_id, sop_uid, record.reason)
            self.store.event("error", study_id, f"SOP {sop_uid}: {record.reason}")
        elif record.status is Status.OK:
            log.info("study %s: instance %s (SOP %s) analysed: %d image(s), %d finding(s), %d output(s) stored",
                     study_id, instance_id, sop_uid, len(result.images), summary.findings, len(result.outputs))

    def _describe(self, record: InstanceRecord, result: InstanceResult) -> list[dict[str, Any]]:
        """Per analysed frame what the Explorer panel and /branet/studies/{id} show (thumbnails written here)."""
        from branet_pacs.orthanc.thumbnails import render_thumbnail

        thumbs = self.settings.thumbnails_dir / record.study_id
        images: list[dict[str, Any]] = []
        for image in result.images:
            frame = image.image.frame_number
            entry: dict[str, Any] = {
                "frame": frame, "modality": image.image.modality, "laterality": image.image.laterality,
                "instance_number": _instance_number(image.image.dataset),
                "seg": str(image.seg.SOPInstanceUID) if image.seg is not None else None,
                "sr": str(image.sr.SOPInstanceUID) if image.sr is not None else None,
                "cad": str(image.cad_sr.SOPInstanceUID) if image.cad_sr is not None else None,
                "model": image.models.as_json(), "findings": []}
            for finding in image.findings:
                name = f"{record.sop_uid}_{frame or 0}_{finding.index}.png"
                thumbs.mkdir(parents=True, exist_ok=True)
                (thumbs / name).write_bytes(render_thumbnail(image.image, finding))
                entry["findings"].append({
                    "index": finding.index, "label": finding.label, "p_malignant": round(finding.p_malignant, 4),
                    "box": list(finding.box), "proposal_score": round(finding.proposal_score, 4),
                    "prompt": finding.prompt, "thumbnail": name})
            images.append(entry)
        for failure in result.failures:
            images.append({"frame": failure.image.frame_number, "modality": failure.image.modality,
                           "error": failure.reason})
        return images

    def _store_outputs(self, record: InstanceRecord, result: InstanceResult) -> None:
        """Record the outputs as ours, then store them (SEG before the SR that references it)."""
        from branet_pacs.outputs import encode, output_kind

        outputs = result.outputs
        self.store.record_outputs([OutputRecord(sop_uid=str(ds.SOPInstanceUID), study_id=record.study_id,
                                                source_instance=record.instance_id, kind=output_kind(ds))
                                   for ds in outputs])
        for dataset in outputs:
            answer = self.api.post_dicom(encode(dataset))
            self.store.output_stored(str(dataset.SOPInstanceUID), str(answer["ID"]))


# --- the process ---------------------------------------------------------------------------------------------------
def _die_with_parent(parent_pid: int | None) -> None:
    """Exit when the process that started us (Orthanc) dies, even by kill -9."""
    if not parent_pid:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(3)


class WorkerProcess:
    def __init__(self, settings: ServiceSettings, token: str, parent_pid: int | None) -> None:
        self.settings = settings
        self.token = token
        self.parent_pid = parent_pid
        self.stopping = threading.Event()
        self.busy = False

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.stopping.set()
        if self.busy:
            raise WorkerStopping()

    def run(self) -> int:
        from branet_pacs.config import load_config
        from branet_pacs.models.runtime import threads_per_process
        from branet_pacs.pipeline import Analyzer

        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})  # Orthanc's threads block them
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, self._on_sigterm)
        credentials = load_credentials(self.settings.credentials)
        api = HttpOrthanc(self.settings.rest_url, credentials.username, credentials.password)
        store = ServiceStore(self.settings.store_path)
        config = load_config(self.settings.branet_config or None)
        config = dataclasses.replace(config, threads=threads_per_process(config.threads, self.settings.workers))
        worker = StudyWorker(api, store, self.settings, Analyzer(config), self.token)
        worker.warm_up()
        log.info("worker %s ready (pid %d)", self.token, os.getpid())
        while not self.stopping.is_set():
            if self.parent_pid and os.getppid() != self.parent_pid:
                log.warning("worker %s: parent gone, exiting", self.token)
                return 3
            study = store.claim(self.token)
            if study is None:
                self.stopping.wait(IDLE_POLL)
                continue
            self._process(worker, store, study)
        return 0

    def _process(self, worker: StudyWorker, store: ServiceStore, study: StudyRecord) -> None:
        self.busy = True
        try:
            worker.process(study)
        except WorkerStopping:
            self.busy = False
            store.requeue(study.study_id, self.token)
            log.info("worker %s stopping: study %s given back", self.token, study.study_id)
        except (OrthancError, OSError, sqlite3.Error) as exc:
            self._retry(worker, study, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - an unexpected bug: recorded, retried, then failed
            log.exception("study %s: unexpected failure", study.study_id)
            self._retry(worker, study, f"unexpected {type(exc).__name__}: {exc}")
        finally:
            self.busy = False

    def _retry(self, worker: StudyWorker, study: StudyRecord, reason: str) -> None:
        retry = worker.store.retry_or_fail(study.study_id, reason, self.settings.max_attempts,
                                           self.settings.retry_delay, worker=self.token)
        log.warning("study %s: %s", study.study_id, retry.reason if retry else reason)
        if retry is not None and retry.state is StudyState.FAILED:
            try:
                worker._put_metadata(study.study_id, {
                    METADATA_STATUS: StudyState.FAILED.value, METADATA_REASON: retry.reason[:MAX_METADATA_REASON],
                    METADATA_TIME: datetime.now(timezone.utc).isoformat(timespec="seconds")})
            except OrthancError as exc:
                log.warning("study %s: failed state not written to Orthanc metadata: %s", study.study_id, exc)


def _instance_number(ds: Any) -> int | None:
    """The source image's Instance Number, how a radiologist names "image 3" of a series (None when absent)."""
    try:
        return int(ds.get("InstanceNumber"))
    except (TypeError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="branet-worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--token", default=f"manual-{os.getpid()}", help="worker identity in the queue")
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process dies")
    parser.add_argument("--config", help="generated Orthanc configuration (default: $%s)" % SETTINGS_ENV)
    args = parser.parse_args(argv)
    _die_with_parent(args.parent_pid)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s branet-worker[%(process)d] %(name)s: %(message)s")
    from branet_pacs.cli import quiet_libraries

    quiet_libraries()   # their per-object chatter and per-plugin tracebacks; our own lines say what happened
    if args.config:
        settings = ServiceSettings.from_file(args.config)
    elif os.environ.get(SETTINGS_ENV):
        settings = settings_from_env(os.environ[SETTINGS_ENV])
    else:
        parser.error(f"give --config or set ${SETTINGS_ENV}")
    return WorkerProcess(settings, args.token, args.parent_pid or None).run()


if __name__ == "__main__":
    sys.exit(main())

