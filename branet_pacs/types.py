"""Plain values that cross stage boundaries, and the one vocabulary of outcomes. Nothing here does work, and
nothing here imports more than the standard library at run time (the Orthanc plugin uses the vocabulary).

Two words say how things went:
- `Status` is the outcome of one unit of work on one instance (ok / skipped / error): results.csv, the Orthanc
  node's instance records and re-analysis all use it;
- `StudyState` is where a study stands (queued / running, then a final state). `study_verdict` is the one rule that
  turns a study's instance outcomes into its final state and reason, for the node and for re-analysis alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # standard library only at run time: the Orthanc plugin imports this module
    import numpy as np
    import pydicom

# A box is (x0, y0, x1, y1) in pixel coordinates of the *source frame* (column, row; x1/y1 exclusive).
Box = tuple[int, int, int, int]


class Status(str, Enum):
    """Outcome of one instance: analysed (with or without findings), not a breast image, or could not be done."""

    OK = "ok"
    SKIPPED = "skipped"
    ERROR = "error"


class StudyState(str, Enum):
    """Where a study stands. The last four are final until new images arrive or a re-run is asked for."""

    QUEUED = "queued"        # waiting (for a worker, for a retry, for the next re-analysis run)
    RUNNING = "running"      # being analysed
    ANALYSED = "analysed"    # at least one breast image analysed; per-instance errors, if any, are in the reason
    SKIPPED = "skipped"      # nothing to analyse (no breast image); the reason says why
    ERROR = "error"          # breast images present, none could be analysed (corrupt, model unavailable...)
    FAILED = "failed"        # the run could not finish (worker crashes, archive unreachable, store refused...)


FINAL_STUDY_STATES = frozenset({StudyState.ANALYSED, StudyState.SKIPPED, StudyState.ERROR, StudyState.FAILED})


@dataclass(frozen=True)
class BreastImage:
    """One 2-D breast image ready for analysis (one frame of one instance).

    `pixels` is float32 in [0, 1], grayscale, already cropped to `region` (the US image region or the whole
    frame); `region` maps it back onto the source frame, whose size is `frame_shape` (rows, cols).
    """

    dataset: pydicom.Dataset          # the source instance (pixel data may be dropped); used for references
    pixels: np.ndarray                # float32 (h, w) in [0, 1], 0 = black after VOI/photometric handling
    modality: str                     # "US" or "MG" (DX/CR/SC/OT breast images are treated as "MG")
    frame_number: int | None          # 1-based frame of a multi-frame instance, None for single-frame
    frame_shape: tuple[int, int]      # (rows, cols) of the source frame
    region: Box                       # where `pixels` sits in the source frame
    laterality: str | None = None     # "L", "R" or None when unknown
    breast_mask: np.ndarray | None = None  # bool (h, w) aligned with `pixels`: MG breast less pectoral muscle; None US
    source: str = ""                  # file path or other locator, for reports

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.get("SOPInstanceUID", ""))

    @property
    def study_instance_uid(self) -> str:
        return str(self.dataset.get("StudyInstanceUID", ""))


@dataclass(frozen=True)
class IngestOutcome:
    """What ingest decided for one input (file, bytes or dataset): images to analyse, or a skip/error reason."""

    source: str
    status: Status
    reason: str = ""
    images: tuple[BreastImage, ...] = ()
    dataset: pydicom.Dataset | None = None  # header only; present whenever the input could be parsed


@dataclass(frozen=True)
class Finding:
    """One lesion on one BreastImage, all geometry in source-frame pixel coordinates."""

    index: int                        # 1-based, also the SEG segment number
    box: Box
    mask: np.ndarray                  # bool (frame_rows, frame_cols)
    outline: np.ndarray               # float (n, 2) closed polygon of (column, row) points, first == last
    p_malignant: float
    label: str                        # "benign" or "malignant"
    roi_margin: float = 0.15          # context margin of the classifier's ROI window (thumbnails show that window)
    proposal_score: float = 1.0       # detector confidence (1.0 for user-given boxes)
    prompt: str = "auto"              # "auto" or "box"
    roi_box: Box | None = None        # the box the classifier's ROI was cut around (None: `box`)


def software_version(model_name: str, model_version: str) -> str:
    """The Software Versions value (LO, 64 characters) that names a classifier in every object it made."""
    return f"{model_name} {model_version}"[:64]


@dataclass(frozen=True)
class ModelIdentity:
    """Which models, weights and settings produced an output: written into every object, part of its UIDs.

    `software_version` is the marker our writers put into Software Versions; re-analysis compares it with what an
    archive already holds. `fingerprint` covers everything that changes the outputs (weights by checksum, the
    analysis settings), so two runs share output UIDs exactly when they would produce the same objects.
    """

    classifier_name: str
    classifier_version: str
    threshold: float
    segmenter_name: str
    detector_name: str | None = None
    detector_version: str | None = None
    weights_sha256: tuple[str, ...] = ()   # of the classifier (and detector) weights files
    settings: str = ""                     # fingerprint of the analysis settings (see pipeline.settings_fingerprint)

    @property
    def algorithm_version(self) -> str:
        """The single version string stored in SEG/SR algorithm identification."""
        return self.classifier_version

    @property
    def software_version(self) -> str:
        return software_version(self.classifier_name, self.classifier_version)

    @property
    def fingerprint(self) -> str:
        text = repr((self.classifier_name, self.classifier_version, self.threshold, self.segmenter_name,
                     self.detector_name, self.detector_version, self.weights_sha256, self.settings))
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def as_json(self) -> dict[str, object]:
        return {"classifier": self.classifier_name, "version": self.classifier_version, "threshold": self.threshold,
                "segmenter": self.segmenter_name, "detector": self.detector_name}


@dataclass(frozen=True)
class ImageResult:
    """Everything the pipeline produced for one BreastImage."""

    image: BreastImage
    findings: tuple[Finding, ...]
    models: ModelIdentity
    seg: pydicom.Dataset | None = None   # None when there is no finding
    sr: pydicom.Dataset | None = None
    timings: dict[str, float] = field(default_factory=dict)
    cad_sr: pydicom.Dataset | None = None   # Mammography CAD SR ([output] mammography_cad_sr, MG only)

    @property
    def outputs(self) -> tuple[pydicom.Dataset, ...]:
        """The objects to store, the SEG before the SR that references it."""
        return tuple(ds for ds in (self.seg, self.sr, self.cad_sr) if ds is not None)


@dataclass(frozen=True)
class ImageFailure:
    """An image of an ingested instance that could not be analysed."""

    image: BreastImage
    reason: str


@dataclass(frozen=True)
class InstanceResult:
    """The unit of work's answer for one input instance: ingest decision, per-image results and failures."""

    ingest: IngestOutcome
    images: tuple[ImageResult, ...] = ()
    failures: tuple[ImageFailure, ...] = ()

    @property
    def source(self) -> str:
        return self.ingest.source

    @property
    def header(self) -> pydicom.Dataset | None:
        return self.ingest.dataset

    def _header_value(self, keyword: str) -> str:
        header = self.ingest.dataset
        try:
            return str(header.get(keyword, "") or "") if header is not None else ""
        except Exception:  # a malformed value in a header we could otherwise parse
            return ""

    @property
    def sop_instance_uid(self) -> str:
        return self._header_value("SOPInstanceUID")

    @property
    def study_instance_uid(self) -> str:
        return self._header_value("StudyInstanceUID")

    @property
    def modality(self) -> str:
        return self._header_value("Modality")

    @property
    def status(self) -> Status:
        """OK when at least one image was analysed; per-image failures then show in `reason`."""
        if self.ingest.status is not Status.OK:
            return self.ingest.status
        return Status.OK if self.images else Status.ERROR

    @property
    def reason(self) -> str:
        if self.ingest.status is not Status.OK:
            return self.ingest.reason
        reasons = "; ".join(failure.reason for failure in self.failures)
        return reasons if self.images else (reasons or "no image analysed")

    @property
    def outputs(self) -> tuple[pydicom.Dataset, ...]:
        return tuple(ds for image in self.images for ds in image.outputs)

    def breast_views(self) -> list[tuple[str, str, str | None, list[tuple[str, float]]]]:
        """The analysed images as `breast_results` wants them."""
        return [(self.study_instance_uid, image.image.modality, image.image.laterality,
                 [(f.label, f.p_malignant) for f in image.findings]) for image in self.images]

    def summary(self) -> InstanceSummary:
        return InstanceSummary(
            sop_instance_uid=self.sop_instance_uid, status=self.status, reason=self.reason,
            findings=sum(len(image.findings) for image in self.images),
            model_version=", ".join(sorted({image.models.software_version for image in self.images})))


@dataclass(frozen=True)
class InstanceSummary:
    """What a study verdict needs to know about one instance (kept in the node's and re-analysis' records)."""

    sop_instance_uid: str
    status: Status
    reason: str = ""
    findings: int = 0
    model_version: str = ""


@dataclass(frozen=True)
class StudyVerdict:
    state: StudyState
    reason: str
    model_version: str = ""


MAX_REASONS = 5   # instance reasons quoted in a study's reason


def study_verdict(instances: Sequence[InstanceSummary]) -> StudyVerdict:
    """The final state of a study from the outcomes of its instances.

    ANALYSED when at least one instance was analysed (errors of the others are named in the reason, so one bad file
    never hides the good ones' results), ERROR when breast images were found but none could be analysed, SKIPPED
    when there was nothing to analyse.
    """
    ok = [i for i in instances if i.status is Status.OK]
    errors = [i for i in instances if i.status is Status.ERROR]
    skipped = [i for i in instances if i.status is Status.SKIPPED]
    parts: list[str] = []
    if ok:
        findings = sum(i.findings for i in ok)
        parts.append(f"{len(ok)} image instance(s) analysed, {findings} finding(s)")
    if errors:
        more = " ..." if len(errors) > MAX_REASONS else ""
        parts.append(f"{len(errors)} instance(s) with errors: " +
                     "; ".join(f"SOP {i.sop_instance_uid}: {i.reason}" for i in errors[:MAX_REASONS]) + more)
    if skipped:
        reasons = sorted({i.reason for i in skipped})
        more = " ..." if len(reasons) > 3 else ""
        parts.append(f"{len(skipped)} instance(s) skipped ({'; '.join(reasons[:3])}{more})")
    if not instances:
        parts.append("no instances to analyse")
    partial = [f"SOP {i.sop_instance_uid}: {i.reason}" for i in ok if i.reason]
    if partial:
        parts.append("partial: " + "; ".join(partial[:3]))
    state = StudyState.ANALYSED if ok else StudyState.ERROR if errors else StudyState.SKIPPED
    versions = sorted({v.strip() for i in ok for v in i.model_version.split(",") if v.strip()})
    return StudyVerdict(state, ". ".join(parts), ", ".join(versions))


@dataclass(frozen=True)
class BreastResult:
    """One breast of a study: its analysed images of one modality (e.g. the CC and MLO views) taken together.

    p(malignant) is the highest over the breast's findings (a mass seen on two views is one mass; the more
    suspicious view decides), and `label` is that finding's label (the same classifier and threshold decided every
    view of one modality, so it is malignant exactly when any view's finding is)."""

    study_instance_uid: str
    modality: str
    laterality: str                  # "L", "R", or "" when the images do not say
    images: int                      # analysed images (frames) of this breast
    findings: int
    p_malignant: float | None        # None: no finding on any view
    label: str = ""

    CSV_COLUMNS = ("study_instance_uid", "modality", "laterality", "images", "findings", "p_malignant", "label")

    def as_csv_row(self) -> dict[str, str]:
        return {"study_instance_uid": self.study_instance_uid, "modality": self.modality,
                "laterality": self.laterality, "images": str(self.images), "findings": str(self.findings),
                "p_malignant": "" if self.p_malignant is None else f"{self.p_malignant:.4f}", "label": self.label}

    def as_json(self) -> dict[str, object]:
        return {key: getattr(self, key) for key in self.CSV_COLUMNS}


def breast_results(images: Iterable[tuple[str, str, str | None, Sequence[tuple[str, float]]]]) -> list[BreastResult]:
    """Per (study, modality, laterality) from the analysed images: (study UID, modality, laterality, findings as
    (label, p_malignant)). Sorted by study, modality, laterality."""
    grouped: dict[tuple[str, str, str], list[Sequence[tuple[str, float]]]] = {}
    for study, modality, laterality, findings in images:
        grouped.setdefault((study, modality, laterality or ""), []).append(findings)
    results = []
    for (study, modality, laterality), views in sorted(grouped.items()):
        found = [f for view in views for f in view]
        top = max(found, key=lambda f: f[1]) if found else None
        results.append(BreastResult(study, modality, laterality, len(views), len(found),
                                    None if top is None else float(top[1]), "" if top is None else top[0]))
    return results


@dataclass(frozen=True)
class ResultRow:
    """One row of results.csv (one per input instance and finding)."""

    source: str
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    modality: str = ""
    laterality: str = ""             # of the analysed image: "L", "R", "" unknown (breasts.csv groups by it)
    status: Status = Status.OK
    reason: str = ""
    finding: int | None = None
    label: str = ""
    p_malignant: float | None = None
    box: Box | None = None
    seg_file: str = ""
    sr_file: str = ""
    cad_file: str = ""

    CSV_COLUMNS = ("source", "sop_instance_uid", "study_instance_uid", "modality", "status", "reason", "finding",
                   "label", "p_malignant", "x0", "y0", "x1", "y1", "seg_file", "sr_file", "cad_file", "laterality")

    def as_csv_row(self) -> dict[str, str]:
        x0, y0, x1, y1 = self.box if self.box else ("", "", "", "")
        return {
            "source": self.source, "sop_instance_uid": self.sop_instance_uid,
            "study_instance_uid": self.study_instance_uid, "modality": self.modality,
            "status": self.status.value, "reason": self.reason,
            "finding": "" if self.finding is None else str(self.finding), "label": self.label,
            "p_malignant": "" if self.p_malignant is None else f"{self.p_malignant:.4f}",
            "x0": str(x0), "y0": str(y0), "x1": str(x1), "y1": str(y1),
            "seg_file": self.seg_file, "sr_file": self.sr_file, "cad_file": self.cad_file,
            "laterality": self.laterality,
        }
