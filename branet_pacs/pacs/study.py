"""The unit of re-analysis: one study's instances in, the SEG + SR objects to store and per-instance statuses out.

`analyze_study` touches no network, file or state: it is a pure function of the core (ingest + `Analyzer`), so the
local worker processes run it today and a distributed engine can run it later.

Output SOP Instance UIDs are made deterministic here: derived from the source instance, frame, object kind, model
identity and analysis settings (the writers already derive the series UIDs from the study and model version). A
study re-done after a crash or a kill therefore sends the same instances again, and the archive keeps one copy:
no duplicates, without having to ask the archive what a half-finished run left behind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

import branet_pacs
from branet_pacs.config import Config
from branet_pacs.dicom.ingest import ingest_dataset
from branet_pacs.pipeline import Analyzer
from branet_pacs.types import ImageResult, Status

MAX_REASONS = 3   # reasons quoted in a study-level message


@dataclass(frozen=True)
class InstanceStatus:
    """What happened to one source instance."""

    sop_instance_uid: str
    status: Status
    reason: str = ""
    findings: int = 0


@dataclass(frozen=True)
class StudyOutcome:
    """Result of `analyze_study`: objects to store (each SEG before the SR that references it) and statuses."""

    study_uid: str
    instances: tuple[InstanceStatus, ...]
    outputs: tuple[Dataset, ...]

    @property
    def status(self) -> str:
        """"failed" when any instance failed, "skipped" when none was analysed, else "analysed"."""
        if any(i.status is Status.ERROR for i in self.instances):
            return "failed"
        if not any(i.status is Status.OK for i in self.instances):
            return "skipped"
        return "analysed"

    @property
    def reason(self) -> str:
        if self.status == "analysed":
            findings = sum(i.findings for i in self.instances)
            images = sum(i.status is Status.OK for i in self.instances)
            return f"{images} instance(s) analysed, {findings} finding(s)"
        wanted = Status.ERROR if self.status == "failed" else Status.SKIPPED
        reasons = [i.reason for i in self.instances if i.status is wanted]
        if not reasons:
            return "no instance retrieved"
        more = f" (+{len(reasons) - MAX_REASONS} more)" if len(reasons) > MAX_REASONS else ""
        return "; ".join(reasons[:MAX_REASONS]) + more


def analysis_fingerprint(config: Config) -> str:
    """What, besides the models, decides the outputs: the ingest, segmentation and output settings."""
    text = repr((config.ingest, config.segmentation, config.output))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def remap_uids(ds: Dataset, mapping: Mapping[str, str]) -> None:
    """Replace every UI value found in `mapping`, at any depth (references included), and the file meta."""
    for element in ds.iterall():
        if element.VR != "UI" or element.value in (None, ""):
            continue
        if element.VM > 1:
            element.value = [mapping.get(str(v), str(v)) for v in element.value]
        elif str(element.value) in mapping:
            element.value = mapping[str(element.value)]
    meta = getattr(ds, "file_meta", None)
    if meta is not None and str(meta.get("MediaStorageSOPInstanceUID", "")) in mapping:
        meta.MediaStorageSOPInstanceUID = mapping[str(meta.MediaStorageSOPInstanceUID)]


def stable_outputs(result: ImageResult, fingerprint: str) -> list[Dataset]:
    """The SEG (if any) and SR of one image with deterministic SOP Instance UIDs."""
    image = result.image
    outputs = [ds for ds in (result.seg, result.sr) if ds is not None]
    mapping = {
        str(ds.SOPInstanceUID): generate_uid(entropy_srcs=[
            branet_pacs.ALGORITHM_NAME, image.sop_instance_uid, str(image.frame_number or 0), str(ds.Modality),
            repr(result.models), fingerprint])
        for ds in outputs}
    for ds in outputs:
        remap_uids(ds, mapping)
    return outputs


def analyze_study(datasets: Iterable[Dataset], analyzer: Analyzer) -> StudyOutcome:
    """Ingest and analyse every instance of one study; never raises for bad input (see the statuses)."""
    fingerprint = analysis_fingerprint(analyzer.config)
    statuses: list[InstanceStatus] = []
    outputs: list[Dataset] = []
    study_uid = ""
    for ds in datasets:
        sop_uid = str(ds.get("SOPInstanceUID", ""))
        study_uid = study_uid or str(ds.get("StudyInstanceUID", ""))
        analysis = analyzer.analyze_outcome(ingest_dataset(ds, analyzer.config.ingest, f"SOP {sop_uid}"))
        for result in analysis.results:
            outputs.extend(stable_outputs(result, fingerprint))
        reasons = [analysis.outcome.reason] if analysis.outcome.status is not Status.OK else \
            [reason for _, reason in analysis.failures]
        statuses.append(InstanceStatus(sop_uid, analysis.status, "; ".join(r for r in reasons if r),
                                       sum(len(r.findings) for r in analysis.results)))
    return StudyOutcome(study_uid, tuple(statuses), tuple(outputs))
