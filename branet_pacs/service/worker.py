"""The worker process: take a study from the queue, analyse its new breast images, store SEG + SR into Orthanc.

Per study (`StudyWorker.process`):
  1. a forced re-run first deletes the study's earlier BraNet outputs from Orthanc;
  2. outputs left in the outbox by an interrupted run are stored (the same files: Orthanc keeps one copy per SOP
     Instance UID, so a crash between "stored" and "recorded" never makes a duplicate);
  3. every instance that is neither handled already nor made by BraNet is fetched over REST, ingested and analysed;
     its decision and its SEG/SR (written to the outbox first) are recorded in one transaction, then stored;
  4. the study's status, model version, time and reason go into Orthanc metadata and the service database, and the
     new outputs are handed to the forwarder.
A failure of one instance (unreadable, not decodable, analysis error) is recorded for that instance and the others
go on; a failure of the study (Orthanc unreachable, database error) retries it with backoff, up to MaxAttempts.

Run by the plugin's supervisor: `python -m branet_pacs.service.worker --token T --parent-pid P` with the settings in
$BRANET_SERVICE_SETTINGS (or `--config DIR/orthanc.json`).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path
from typing import Any

from branet_pacs.service.credentials import load_credentials
from branet_pacs.service.rest import HttpOrthanc, OrthancApi, OrthancError
from branet_pacs.service.settings import ServiceSettings
from branet_pacs.service.status import (MAX_METADATA_REASON, METADATA_MODEL_VERSION, METADATA_REASON,
                                        METADATA_STATUS, METADATA_TIME, InstanceState, StudyState)
from branet_pacs.service.store import InstanceRecord, OutputRecord, ServiceStore, StudyRecord
from branet_pacs.service.supervisor import SETTINGS_ENV, settings_from_env

log = logging.getLogger("branet_pacs.service.worker")

IDLE_POLL = 0.3       # seconds between queue polls when idle
PR_SET_PDEATHSIG = 1


class WorkerStopping(Exception):
    """SIGTERM: give the current study back (without counting an attempt) and exit."""


@dataclass(frozen=True)
class StudySummary:
    state: StudyState
    reason: str
    model_version: str


def summarise(instances: Sequence[InstanceRecord]) -> StudySummary:
    """The study's state from its instances' decisions (every run so far, not only the last)."""
    instances = [i for i in instances if i.state is not InstanceState.PENDING]
    ok = [i for i in instances if i.state in (InstanceState.OK, InstanceState.STORING)]
    errors = [i for i in instances if i.state is InstanceState.ERROR]
    skipped = [i for i in instances if i.state is InstanceState.SKIPPED]
    versions = sorted({i.model_version for i in ok if i.model_version})
    parts: list[str] = []
    if ok:
        findings = sum(len(img.get("findings", [])) for i in ok for img in i.images)
        parts.append(f"{len(ok)} image instance(s) analysed, {findings} finding(s)")
    if errors:
        parts.append(f"{len(errors)} instance(s) with errors: " +
                     "; ".join(f"SOP {i.sop_uid}: {i.reason}" for i in errors[:5]) +
                     (" ..." if len(errors) > 5 else ""))
    if skipped:
        reasons = sorted({i.reason for i in skipped})
        parts.append(f"{len(skipped)} instance(s) skipped ({'; '.join(reasons[:3])}{' ...' if len(reasons) > 3 else ''})")
    if ok:
        state = StudyState.ANALYSED
    elif errors:
        state = StudyState.ERROR
    else:
        state = StudyState.SKIPPED
        if not instances:
            parts.append("no instances to analyse")
    # the first analysed instances' failures (e.g. one bad frame) also belong in the reason
    partial = [f"SOP {i.sop_uid}: {i.reason}" for i in ok if i.reason]
    if partial:
        parts.append("partial: " + "; ".join(partial[:3]))
    return StudySummary(state, ". ".join(parts), ", ".join(versions))


class StudyWorker:
    def __init__(self, api: OrthancApi, store: ServiceStore, settings: ServiceSettings, analyzer: Any,
                 token: str) -> None:
        self.api = api
        self.store = store
        self.settings = settings
        self.analyzer = analyzer
        self.token = token
        self.rules = analyzer.config.ingest
        self.roi_margin = analyzer.config.segmentation.roi_margin

    # --- models ----------------------------------------------------------------------------------------------------
    def warm_up(self) -> list[str]:
        """Load every model once now, so the first study does not pay for it; returns what is unavailable."""
        from branet_pacs.models.errors import ModelUnavailable
        missing = []
        for what, load in (("segmenter", lambda: self.analyzer.segmenter()),
                           *((f"{m} classifier", lambda m=m: self.analyzer.classifier(m)) for m in ("US", "MG")),
                           *((f"{m} detector", lambda m=m: self.analyzer.detector(m)) for m in ("US", "MG"))):
            try:
                load()
            except ModelUnavailable as exc:
                missing.append(f"{what}: {exc}")
        for line in missing:
            log.warning("model unavailable (images needing it will be recorded as errors): %.300s", line)
        return missing

    # --- one study -------------------------------------------------------------------------------------------------
    def process(self, study: StudyRecord) -> StudySummary:
        sid = study.study_id
        log.info("study %s (StudyInstanceUID %s): attempt %d", sid, study.study_uid, study.attempts)
        self._put_metadata(sid, {METADATA_STATUS: StudyState.RUNNING.value})
        if study.force:
            self._discard_outputs(sid)
        self._store_pending_outputs(sid)
        try:
            listing = self.api.get_json(f"/studies/{sid}/instances")
        except OrthancError as exc:
            if not exc.not_found:
                raise
            summary = StudySummary(StudyState.SKIPPED, "study deleted from Orthanc before analysis", "")
            self.store.finish(sid, self.token, summary.state, summary.reason, "")
            return summary
        pairs = [(str(i["ID"]), str(i.get("MainDicomTags", {}).get("SOPInstanceUID", ""))) for i in listing]
        new = self.store.instances_to_analyse(sid, pairs)
        self.store.plan_instances(sid, new)
        for instance_id, sop_uid in new:
            self._analyse_instance(sid, instance_id, sop_uid)
        summary = summarise(self.store.instances(sid))
        finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._put_metadata(sid, {METADATA_STATUS: summary.state.value, METADATA_MODEL_VERSION: summary.model_version,
                                 METADATA_TIME: finished, METADATA_REASON: summary.reason[:MAX_METADATA_REASON]})
        if self.settings.forward.destinations:
            self.store.queue_forwards(sid, self.settings.forward.destinations, self.settings.forward.whole_study)
        self.store.finish(sid, self.token, summary.state, summary.reason, summary.model_version)
        log.info("study %s: %s (%d new instance(s)) - %s", sid, summary.state.value, len(new), summary.reason)
        return summary

    def _put_metadata(self, study_id: str, values: dict[str, str]) -> None:
        for name, value in values.items():
            self.api.put_text(f"/studies/{study_id}/metadata/{name}", value)

    def _discard_outputs(self, study_id: str) -> None:
        """Forced re-run: delete earlier BraNet outputs from Orthanc, forget the study's decisions."""
        for output in self.store.outputs(study_id):
            instance_id = output.instance_id or self._lookup(output.sop_uid)
            if instance_id:
                try:
                    self.api.delete(f"/instances/{instance_id}")
                except OrthancError as exc:
                    if not exc.not_found:
                        raise
            if output.file:
                Path(output.file).unlink(missing_ok=True)
        self.store.forget_results(study_id)
        thumbnails = self.settings.thumbnails_dir / study_id
        if thumbnails.is_dir():
            for path in thumbnails.iterdir():
                path.unlink(missing_ok=True)
        log.info("study %s: earlier outputs deleted for the re-run", study_id)

    def _lookup(self, sop_uid: str) -> str:
        answer = self.api.request("POST", "/tools/lookup", sop_uid.encode(), "text/plain")
        for item in json.loads(answer):
            if item.get("Type") == "Instance":
                return str(item["ID"])
        return ""

    def _store_output(self, output: OutputRecord) -> None:
        path = Path(output.file)
        answer = self.api.post_dicom(path.read_bytes())
        self.store.output_stored(output.sop_uid, str(answer["ID"]))
        path.unlink(missing_ok=True)

    def _store_pending_outputs(self, study_id: str) -> None:
        """Finish an interrupted store: outbox files are posted again; lost ones are looked up, else redone."""
        pending = self.store.outputs(study_id, stored=False)
        redo: set[str] = set()
        for output in pending:
            if output.file and Path(output.file).is_file():
                self._store_output(output)
                continue
            instance_id = self._lookup(output.sop_uid)
            if instance_id:
                self.store.output_stored(output.sop_uid, instance_id)
            else:
                redo.add(output.source_instance)
        for source in redo:
            log.warning("study %s: outputs of instance %s were lost before being stored; analysing it again",
                        study_id, source)
            for output in self.store.outputs(study_id):
                if output.source_instance == source and output.instance_id:
                    self.api.delete(f"/instances/{output.instance_id}")
            self.store.forget_instance(source)
        for record in self.store.instances(study_id):
            if record.state is InstanceState.STORING:
                self.store.complete_instance(record.instance_id)
        if pending:
            log.info("study %s: %d output(s) from an interrupted run stored", study_id, len(pending) - len(redo))

    # --- one instance ----------------------------------------------------------------------------------------------
    def _analyse_instance(self, study_id: str, instance_id: str, sop_uid: str) -> None:
        from branet_pacs.dicom.ingest import ingest_dataset, read_dicom
        from branet_pacs.types import Status

        source = f"orthanc instance {instance_id}"
        base = InstanceRecord(instance_id=instance_id, study_id=study_id, sop_uid=sop_uid,
                              state=InstanceState.ERROR)
        clock = time.perf_counter()
        try:
            data = self.api.get(f"/instances/{instance_id}/file")
        except OrthancError as exc:
            if exc.not_found:
                self.store.record_instance(dataclasses.replace(base, state=InstanceState.SKIPPED,
                                                               reason="deleted before analysis"))
                return
            raise
        timings = {"fetch": time.perf_counter() - clock}
        clock = time.perf_counter()
        scratch = self.settings.outbox_dir / "incoming"
        scratch.mkdir(parents=True, exist_ok=True)
        path = scratch / f"{instance_id}-{self.token}.dcm"
        path.write_bytes(data)
        try:
            ds, problem = read_dicom(path)
        finally:
            path.unlink(missing_ok=True)
        if ds is None or problem:
            self._record_error(base, f"{problem or 'unreadable'}")
            return
        outcome = ingest_dataset(ds, self.rules, source)
        modality = str(ds.get("Modality", ""))
        timings["decode"] = time.perf_counter() - clock
        base = dataclasses.replace(base, timings={k: round(v, 4) for k, v in timings.items()})
        if outcome.status is Status.SKIPPED:
            self.store.record_instance(dataclasses.replace(base, state=InstanceState.SKIPPED, modality=modality,
                                                           reason=outcome.reason.removeprefix(f"{source}: ")))
            return
        if outcome.status is Status.ERROR:
            self._record_error(dataclasses.replace(base, modality=modality),
                               outcome.reason.removeprefix(f"{source}: "))
            return
        clock = time.perf_counter()
        analysis = self.analyzer.analyze_outcome(outcome)
        timings["analyse"] = time.perf_counter() - clock
        for result in analysis.results:
            for stage, seconds in result.timings.items():
                timings[f"pipeline.{stage}"] = timings.get(f"pipeline.{stage}", 0.0) + seconds
        self._record_analysis(dataclasses.replace(base, modality=modality), analysis, timings)

    def _record_error(self, record: InstanceRecord, reason: str) -> None:
        log.warning("study %s: instance %s (SOP %s): %s", record.study_id, record.instance_id, record.sop_uid,
                    reason)
        self.store.record_instance(dataclasses.replace(record, state=InstanceState.ERROR, reason=reason))
        self.store.event("error", record.study_id, f"SOP {record.sop_uid}: {reason}")

    def _record_analysis(self, record: InstanceRecord, analysis: Any, timings: dict[str, float]) -> None:
        from branet_pacs.service.thumbnails import render_thumbnail

        clock = time.perf_counter()
        study_id, instance_id = record.study_id, record.instance_id
        outbox = self.settings.outbox_dir / study_id
        thumbs = self.settings.thumbnails_dir / study_id
        outputs: list[OutputRecord] = []
        images: list[dict[str, Any]] = []
        versions = set()
        for result in analysis.results:
            frame = result.image.frame_number
            versions.add(f"{result.models.classifier_name} {result.models.classifier_version}")
            entry: dict[str, Any] = {
                "frame": frame, "modality": result.image.modality, "laterality": result.image.laterality,
                "seg": str(result.seg.SOPInstanceUID) if result.seg is not None else None,
                "sr": str(result.sr.SOPInstanceUID) if result.sr is not None else None,
                "model": {"classifier": result.models.classifier_name, "version": result.models.classifier_version,
                          "threshold": result.models.threshold, "segmenter": result.models.segmenter_name,
                          "detector": result.models.detector_name},
                "findings": [],
            }
            for finding in result.findings:
                name = f"{record.sop_uid}_{frame or 0}_{finding.index}.png"
                thumbs.mkdir(parents=True, exist_ok=True)
                (thumbs / name).write_bytes(render_thumbnail(result.image, finding, self.roi_margin))
                entry["findings"].append({
                    "index": finding.index, "label": finding.label, "p_malignant": round(finding.p_malignant, 4),
                    "box": list(finding.box), "proposal_score": round(finding.proposal_score, 4),
                    "prompt": finding.prompt, "thumbnail": name})
            images.append(entry)
            for kind, dataset in (("SEG", result.seg), ("SR", result.sr)):
                if dataset is None:
                    continue
                outbox.mkdir(parents=True, exist_ok=True)
                path = outbox / f"{dataset.SOPInstanceUID}.dcm"
                _write_durably(dataset, path)
                outputs.append(OutputRecord(sop_uid=str(dataset.SOPInstanceUID), study_id=study_id,
                                            source_instance=instance_id, kind=kind, file=str(path)))
        for image, reason in analysis.failures:
            images.append({"frame": image.frame_number, "modality": image.modality, "error": reason})
        reasons = "; ".join(reason for _, reason in analysis.failures)
        if not analysis.results:
            self._record_error(dataclasses.replace(record, images=images), reasons or "no image analysed")
            return
        timings["outputs"] = time.perf_counter() - clock
        state = InstanceState.STORING if outputs else InstanceState.OK
        self.store.record_instance(dataclasses.replace(
            record, state=state, reason=reasons, images=images, model_version=", ".join(sorted(versions)),
            timings={k: round(v, 4) for k, v in timings.items()}), outputs)
        clock = time.perf_counter()
        for output in outputs:
            self._store_output(output)
        if outputs:
            self.store.complete_instance(instance_id, time.perf_counter() - clock)
        log.info("study %s: instance %s (SOP %s) analysed: %d image(s), %d finding(s), %d output(s) stored",
                 study_id, instance_id, record.sop_uid, len(analysis.results),
                 sum(len(r.findings) for r in analysis.results), len(outputs))


def _write_durably(dataset: Any, path: Path) -> None:
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as handle:
        handle.write(buffer.getvalue())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


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
        from branet_pacs.pipeline import Analyzer

        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})  # Orthanc's threads block them
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, self._on_sigterm)
        credentials = load_credentials(self.settings.credentials)
        api = HttpOrthanc(self.settings.rest_url, credentials.username, credentials.password)
        store = ServiceStore(self.settings.store_path)
        config = load_config(self.settings.branet_config or None)
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
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    if args.config:
        settings = ServiceSettings.from_file(args.config)
    elif os.environ.get(SETTINGS_ENV):
        settings = settings_from_env(os.environ[SETTINGS_ENV])
    else:
        parser.error(f"give --config or set ${SETTINGS_ENV}")
    return WorkerProcess(settings, args.token, args.parent_pid or None).run()


if __name__ == "__main__":
    sys.exit(main())
