"""`branet prepare`: public datasets -> ImageFolder ROI datasets, cut through the pipeline's one ROI code path.

Output layout (OUT):
    OUT/<label>/<name>-<k>.png          128x128 8-bit ROI (`roi_to_uint8(extract_roi(image, box, margin))`)
    OUT/<label>/masks/<name>-<k>.png    the lesion's mask in the *source frame* (full image size), when the
                                        dataset has masks (BUSI); same file name as its ROI
    OUT/manifest.csv                    roi_file,source,label,group,box  (box = "x0 y0 x1 y1", source frame,
                                        source relative to SRC; group = what must never be split across folds)
    OUT/prepare.json                    dataset, source root, margin, counts and skipped entries

`branet evaluate` finds the source image of a mask through manifest.csv + prepare.json (or `--images`), so the
segmenter is measured on the full image as in the pipeline. Output is deterministic: inputs are visited in
sorted order and PNGs are written without metadata.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from branet_pacs.imaging.geometry import mask_box
from branet_pacs.imaging.roi import extract_roi, roi_to_uint8
from branet_pacs.types import Box

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
PREPARE_INFO = "prepare.json"
MANIFEST_COLUMNS = ("roi_file", "source", "label", "group", "box")
CLASSES = ("benign", "malignant")
LABEL_ALIASES = {"benign": "benign", "b": "benign", "0": "benign",
                 "malignant": "malignant", "m": "malignant", "1": "malignant", "normal": "normal"}


@dataclass(frozen=True)
class Lesion:
    """One lesion to cut: where it is and what it is."""

    source: Path          # source image
    name: str             # output stem (unique within the label)
    label: str            # benign | malignant | normal
    group: str
    box: Box
    mask: np.ndarray | None = None   # bool, source frame


@dataclass
class PrepareReport:
    dataset: str
    source_root: str
    margin: float
    rois: Counter = field(default_factory=Counter)         # per label
    images: int = 0                                         # source images read
    skipped: list[str] = field(default_factory=list)        # human-readable reasons

    def as_dict(self) -> dict:
        return {"dataset": self.dataset, "source_root": self.source_root, "margin": self.margin,
                "rois": dict(sorted(self.rois.items())), "images": self.images,
                "skipped_count": len(self.skipped), "skipped": self.skipped}


# --------------------------------------------------------------------------------------------- reading helpers
def load_gray(path: Path) -> np.ndarray:
    """A grayscale image as float32 in [0, 1] (8- or 16-bit PNG/JPEG/TIFF; colour is converted to luminance)."""
    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float32)
            return (arr / 65535.0).clip(0.0, 1.0)
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def load_mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 127


def save_png(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG", optimize=False)


def normalise_label(value: str) -> str:
    key = value.strip().lower()
    if key not in LABEL_ALIASES:
        raise ValueError(f"unknown label {value!r} (expected benign/malignant, B/M or 0/1)")
    return LABEL_ALIASES[key]


def format_box(box: Box) -> str:
    return " ".join(str(int(v)) for v in box)


def parse_box(text: str) -> Box:
    values = [int(round(float(v))) for v in text.split()]
    if len(values) != 4:
        raise ValueError(f"box must be 'x0 y0 x1 y1', got {text!r}")
    return values[0], values[1], values[2], values[3]


# --------------------------------------------------------------------------------------------- dataset readers
_BUSI_MASK = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<k>\d+))?\.png$", re.IGNORECASE)


def busi_lesions(src: Path, include_normal: bool, report: PrepareReport) -> list[Lesion]:
    """BUSI: `SRC/<class>/<name>.png` + `SRC/<class>/masks/<name>_mask[_k].png` (one mask file = one lesion).

    group: images with identical pixels share a group (named after the first of them in sorted order), so exact
    duplicates never straddle folds; every other image is its own group.
    """
    classes = ["benign", "malignant"] + (["normal"] if include_normal else [])
    entries: list[tuple[str, Path, list[Path]]] = []
    for label in classes:
        folder = src / label
        if not folder.is_dir():
            raise FileNotFoundError(f"BUSI class folder missing: {folder}")
        masks_by_stem: dict[str, list[tuple[int, Path]]] = defaultdict(list)
        mask_dir = folder / "masks" if (folder / "masks").is_dir() else folder
        for mask_path in sorted(mask_dir.glob("*.png")):
            match = _BUSI_MASK.match(mask_path.name)
            if match:
                masks_by_stem[match["stem"]].append((int(match["k"] or 0), mask_path))
        for image_path in sorted(p for p in folder.glob("*.png") if not _BUSI_MASK.match(p.name)):
            masks = [p for _, p in sorted(masks_by_stem.get(image_path.stem, []))]
            entries.append((label, image_path, masks))

    groups = _duplicate_groups([path for _, path, _ in entries])
    lesions: list[Lesion] = []
    for label, image_path, mask_paths in entries:
        report.images += 1
        group = groups[image_path]
        if label == "normal":
            lesions.append(_normal_lesion(image_path, group))
            continue
        if not mask_paths:
            report.skipped.append(f"{image_path.relative_to(src)}: no mask file")
            continue
        k = 0
        for mask_path in mask_paths:
            mask = load_mask(mask_path)
            box = mask_box(mask)
            if box is None:
                report.skipped.append(f"{mask_path.relative_to(src)}: empty mask")
                continue
            k += 1
            lesions.append(Lesion(image_path, f"{image_path.stem}-{k}", label, group, box, mask))
    return lesions


def _normal_lesion(image_path: Path, group: str) -> Lesion:
    """A lesion-free image: one centred square window of half its shorter side (deterministic)."""
    with Image.open(image_path) as im:
        w, h = im.size
    side = max(min(w, h) // 2, 8)
    x0, y0 = (w - side) // 2, (h - side) // 2
    return Lesion(image_path, f"{image_path.stem}-1", "normal", group, (x0, y0, x0 + side, y0 + side))


def _duplicate_groups(paths: list[Path]) -> dict[Path, str]:
    first_by_digest: dict[str, str] = {}
    groups: dict[Path, str] = {}
    for path in sorted(paths, key=lambda p: (p.parent.name, p.name)):
        with Image.open(path) as im:
            digest = hashlib.sha256(np.asarray(im.convert("L")).tobytes()).hexdigest()
        groups[path] = first_by_digest.setdefault(digest, path.stem)
    return groups


def mias_lesions(src: Path, report: PrepareReport, min_radius: int = 0) -> list[Lesion]:
    """mini-MIAS: `Info.txt` lines `REFNUM BG CLASS SEVERITY X Y RADIUS`, origin bottom-left (row = H - Y).

    One ROI per lesion line; NORM films have none; a lesion line without centre (some CALC cases) is reported and
    skipped. group = patient: left/right films are consecutive numbers, patient = (refnum + 1) // 2.
    Box = centre ± max(radius, min_radius).
    """
    info = src / "Info.txt"
    lines = [line.split() for line in info.read_text().splitlines()]
    counts: Counter = Counter()
    lesions: list[Lesion] = []
    films: set[str] = set()
    heights: dict[str, int] = {}
    for fields in lines:
        if not fields or fields[0].startswith("#"):
            continue
        ref, abnormality = fields[0], fields[2] if len(fields) > 2 else ""
        films.add(ref)
        if abnormality == "NORM":
            continue
        if len(fields) < 7 or not all(re.fullmatch(r"-?\d+(\.\d+)?", v) for v in fields[4:7]):
            report.skipped.append(f"{ref} {abnormality} {fields[3] if len(fields) > 3 else '?'}: no centre given")
            continue
        label = normalise_label(fields[3])
        image_path = src / f"{ref}.png"
        if not image_path.exists():
            report.skipped.append(f"{ref}: image file missing")
            continue
        if ref not in heights:
            with Image.open(image_path) as im:
                heights[ref] = im.size[1]
        x, y, r = (float(v) for v in fields[4:7])
        r = max(r, float(min_radius))
        row = heights[ref] - y
        box = (int(round(x - r)), int(round(row - r)), int(round(x + r)), int(round(row + r)))
        counts[ref] += 1
        patient = (int(re.sub(r"\D", "", ref)) + 1) // 2
        lesions.append(Lesion(image_path, f"{ref}-{counts[ref]}", label, f"patient{patient:03d}", box))
    report.images = len(films)
    return lesions


_CSV_ALIASES = {
    "image": ("image", "filename", "file", "path", "image_path"),
    "label": ("label", "class", "severity", "pathology"),
    "x0": ("x0", "xmin", "x_min"), "y0": ("y0", "ymin", "y_min"),
    "x1": ("x1", "xmax", "x_max"), "y1": ("y1", "ymax", "y_max"),
    "group": ("group", "patient", "patient_id"),
}


def boxes_lesions(csv_path: Path, images: Path, report: PrepareReport) -> list[Lesion]:
    """A CSV with one row per lesion: image (relative to IMAGES), label, x0, y0, x1, y1 [, group].

    Column aliases: filename/file/path, class, xmin/ymin/xmax/ymax, patient. Without a group column each image
    is its own group. Boxes are source-frame pixels, x1/y1 exclusive.
    """
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        header = {name.strip().lower(): name for name in reader.fieldnames or ()}
        columns: dict[str, str] = {}
        for key, aliases in _CSV_ALIASES.items():
            found = next((header[a] for a in aliases if a in header), None)
            if found is None and key != "group":
                raise ValueError(f"{csv_path}: no column for {key} (accepted: {', '.join(aliases)})")
            if found is not None:
                columns[key] = found
        rows = list(reader)
    counts: Counter = Counter()
    lesions: list[Lesion] = []
    seen: set[str] = set()
    def order(row: dict) -> tuple:
        return (row[columns["image"]].strip(), float(row[columns["x0"]]), float(row[columns["y0"]]))

    for row in sorted(rows, key=order):
        rel = row[columns["image"]].strip()
        image_path = images / rel
        seen.add(rel)
        if not image_path.exists():
            report.skipped.append(f"{rel}: image file missing")
            continue
        box = tuple(int(round(float(row[columns[k]]))) for k in ("x0", "y0", "x1", "y1"))
        if box[2] <= box[0] or box[3] <= box[1]:
            report.skipped.append(f"{rel}: empty box {format_box(box)}")
            continue
        stem = re.sub(r"[^A-Za-z0-9_.()-]+", "_", str(Path(rel).with_suffix("")))
        counts[stem] += 1
        group = row[columns["group"]].strip() if "group" in columns and row[columns["group"]].strip() else stem
        lesions.append(Lesion(image_path, f"{stem}-{counts[stem]}", normalise_label(row[columns["label"]]),
                              group, box))  # type: ignore[arg-type]
    report.images = len(seen)
    return lesions


# --------------------------------------------------------------------------------------------- writing
def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} is not empty: choose an empty folder or pass --force")
        if not (out / PREPARE_INFO).exists():
            raise FileExistsError(f"{out} was not written by `branet prepare` (no {PREPARE_INFO}); not emptying it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def write_dataset(lesions: list[Lesion], out: Path, source_root: Path, report: PrepareReport) -> Path:
    """Cut every lesion through `extract_roi`, write PNGs (+ masks), manifest.csv and prepare.json."""
    from tqdm import tqdm

    rows = []
    cache: tuple[Path, np.ndarray] | None = None
    for lesion in tqdm(lesions, desc="ROIs", unit="roi", leave=False):
        if cache is None or cache[0] != lesion.source:
            cache = (lesion.source, load_gray(lesion.source))
        roi = extract_roi(cache[1], lesion.box, report.margin)
        roi_file = f"{lesion.label}/{lesion.name}.png"
        save_png(roi_to_uint8(roi), out / roi_file)
        if lesion.mask is not None:
            save_png(lesion.mask.astype(np.uint8) * 255, out / lesion.label / "masks" / f"{lesion.name}.png")
        report.rois[lesion.label] += 1
        rows.append({"roi_file": roi_file, "source": lesion.source.relative_to(source_root).as_posix(),
                     "label": lesion.label, "group": lesion.group, "box": format_box(lesion.box)})
    rows.sort(key=lambda r: r["roi_file"])
    with open(out / MANIFEST, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    (out / PREPARE_INFO).write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return out / MANIFEST


def prepare(dataset: str, out: Path, *, src: Path | None = None, csv_path: Path | None = None,
            images: Path | None = None, margin: float, include_normal: bool = False, min_radius: int = 0,
            force: bool = False) -> PrepareReport:
    """Run one dataset reader and write the ROI dataset to `out`. Returns the report (also saved as JSON)."""
    if dataset == "busi":
        root = Path(src).resolve()
        report = PrepareReport("busi", str(root), margin)
        lesions = busi_lesions(root, include_normal, report)
    elif dataset == "mias":
        root = Path(src).resolve()
        report = PrepareReport("mias", str(root), margin)
        lesions = mias_lesions(root, report, min_radius)
    elif dataset == "boxes":
        root = Path(images).resolve()
        report = PrepareReport("boxes", str(root), margin)
        lesions = boxes_lesions(Path(csv_path), root, report)
    else:
        raise ValueError(f"unknown dataset kind {dataset!r}")
    _prepare_out(Path(out), force)
    write_dataset(lesions, Path(out), root, report)
    for reason in report.skipped:
        log.warning("skipped %s", reason)
    return report


def read_manifest(data_dir: Path) -> dict[str, dict[str, str]]:
    """manifest.csv rows keyed by roi_file ({} when the folder has none)."""
    path = Path(data_dir) / MANIFEST
    if not path.exists():
        return {}
    with open(path, newline="") as handle:
        return {row["roi_file"]: row for row in csv.DictReader(handle)}


def read_prepare_info(data_dir: Path) -> dict:
    path = Path(data_dir) / PREPARE_INFO
    return json.loads(path.read_text()) if path.exists() else {}
