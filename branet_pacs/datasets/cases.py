"""What a dataset reader yields: one `Case` per image, with its lesions' ground truth."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from branet_pacs.types import Box

CATEGORIES = ("benign", "malignant", "normal")
LABEL_ALIASES = {"benign": "benign", "b": "benign", "0": "benign",
                 "malignant": "malignant", "m": "malignant", "1": "malignant", "normal": "normal"}


@dataclass(frozen=True)
class Lesion:
    """The ground truth of one lesion: its label, its box in source pixels, its mask when the dataset has one."""

    label: str                       # benign | malignant
    box: Box
    mask: np.ndarray | None = None   # bool, source frame
    traced: bool = True              # the mask is a traced outline (BUSI), not an approximation (mini-MIAS disks)


@dataclass(frozen=True)
class Case:
    """One image of a dataset.

    `category` is the image's: malignant when any lesion is, normal when it has none by design. A benign or
    malignant case whose lesions could not all be read keeps what could be read and says why in `notes`: readers
    never drop an image silently, consumers decide (prepare reports it, detector training leaves out what is not
    `complete`).
    """

    name: str                        # unique in the dataset, e.g. "benign/benign (1)" or "mdb001"
    path: Path
    category: str
    group: str                       # never split across folds: the patient, or identical images
    lesions: tuple[Lesion, ...] = ()
    site: str = ""                   # the dataset (site) the image comes from
    notes: tuple[str, ...] = ()      # what could not be read, for reports
    all_lesions_known: bool = True   # False when an abnormality of the image is not in `lesions` (no mask, no centre)
    tags: dict[str, str] = field(default_factory=dict)   # per-image flags a dataset records (BUS-UCLM: calipers...)
    row_scale: float = 1.0           # rows are stretched by this on loading (undoes a squashing resize: CBIS-DDSM)

    @property
    def complete(self) -> bool:
        """The image exists and every abnormality of it is in `lesions` (a detector target needs all of them)."""
        return (self.all_lesions_known and self.path.is_file()
                and (self.category == "normal" or bool(self.lesions)))

    def pixels(self) -> np.ndarray:
        return load_gray(self.path, self.row_scale)


def load_gray(path: Path, row_scale: float = 1.0) -> np.ndarray:
    """A grayscale image as float32 in [0, 1] (8- or 16-bit PNG/JPEG/TIFF; colour is converted to luminance), its
    rows stretched by `row_scale` (bilinear) when that is not 1."""
    with Image.open(path) as im:
        if row_scale != 1.0:
            im = im.resize((im.width, int(round(im.height * row_scale))), Image.BILINEAR)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float32)
            return (arr / 65535.0).clip(0.0, 1.0)
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def load_mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 127


def normalise_label(value: str) -> str:
    key = value.strip().lower()
    if key not in LABEL_ALIASES:
        raise ValueError(f"unknown label {value!r} (expected benign/malignant, B/M or 0/1)")
    return LABEL_ALIASES[key]


def natural_key(text: str) -> tuple:
    """Sort key that puts "benign (2)" before "benign (10)"."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def image_category(lesions: tuple[Lesion, ...]) -> str:
    return "malignant" if any(lesion.label == "malignant" for lesion in lesions) else "benign"
