"""Plain values that cross stage boundaries. Stages take these and return new ones; nothing here does work."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
import pydicom

# A box is (x0, y0, x1, y1) in pixel coordinates of the *source frame* (column, row; x1/y1 exclusive).
Box = tuple[int, int, int, int]


class Status(str, Enum):
    OK = "ok"
    SKIPPED = "skipped"
    ERROR = "error"


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
    breast_mask: np.ndarray | None = None  # bool (h, w) aligned with `pixels` (MG foreground), None for US
    source: str = ""                  # file path or other locator, for reports

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def study_instance_uid(self) -> str:
        return str(self.dataset.StudyInstanceUID)


@dataclass(frozen=True)
class IngestOutcome:
    """What ingest decided for one input (file or dataset): images to analyse, or a skip/error reason."""

    source: str
    status: Status
    reason: str = ""
    images: tuple[BreastImage, ...] = ()
    dataset: pydicom.Dataset | None = None  # header only; present whenever the file could be parsed


@dataclass(frozen=True)
class Finding:
    """One lesion on one BreastImage, all geometry in source-frame pixel coordinates."""

    index: int                        # 1-based, also the SEG segment number
    box: Box
    mask: np.ndarray                  # bool (frame_rows, frame_cols)
    outline: np.ndarray               # float (n, 2) closed polygon of (column, row) points, first == last
    roi: np.ndarray                   # float32 (128, 128) in [-1, 1], the classifier's input
    p_malignant: float
    label: str                        # "benign" or "malignant"
    proposal_score: float = 1.0       # detector confidence (1.0 for user-given boxes)
    prompt: str = "auto"              # "auto" or "box"


@dataclass(frozen=True)
class ModelInfo:
    """Identity of the models used, written into every output object."""

    classifier_name: str
    classifier_version: str
    threshold: float
    segmenter_name: str
    detector_name: str | None = None
    detector_version: str | None = None

    @property
    def algorithm_version(self) -> str:
        """The single version string stored in SEG/SR algorithm identification."""
        return self.classifier_version


@dataclass(frozen=True)
class ImageResult:
    """Everything the pipeline produced for one BreastImage."""

    image: BreastImage
    findings: tuple[Finding, ...]
    models: ModelInfo
    seg: pydicom.Dataset | None = None   # None when there is no finding
    sr: pydicom.Dataset | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ResultRow:
    """One row of results.csv (one per input instance and finding)."""

    source: str
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    modality: str = ""
    status: Status = Status.OK
    reason: str = ""
    finding: int | None = None
    label: str = ""
    p_malignant: float | None = None
    box: Box | None = None
    seg_file: str = ""
    sr_file: str = ""

    CSV_COLUMNS = ("source", "sop_instance_uid", "study_instance_uid", "modality", "status", "reason", "finding",
                   "label", "p_malignant", "x0", "y0", "x1", "y1", "seg_file", "sr_file")

    def as_csv_row(self) -> dict[str, str]:
        x0, y0, x1, y1 = self.box if self.box else ("", "", "", "")
        return {
            "source": self.source, "sop_instance_uid": self.sop_instance_uid,
            "study_instance_uid": self.study_instance_uid, "modality": self.modality,
            "status": self.status.value, "reason": self.reason,
            "finding": "" if self.finding is None else str(self.finding), "label": self.label,
            "p_malignant": "" if self.p_malignant is None else f"{self.p_malignant:.4f}",
            "x0": str(x0), "y0": str(y0), "x1": str(x1), "y1": str(y1),
            "seg_file": self.seg_file, "sr_file": self.sr_file,
        }


def relative_to(path: Path, root: Path) -> str:
    return str(Path(path).resolve().relative_to(Path(root).resolve()))
