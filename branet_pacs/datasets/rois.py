"""ROI datasets: what `branet prepare` writes from a dataset's cases, and what training and evaluation read.

Layout (OUT):
    OUT/<label>/<name>-<k>.png          8-bit ROI, 128x128 or prepare's --roi-size
                                        (`roi_to_uint8(extract_roi(image, box, margin, levels, roi_size))`, levels from
                                        the prepare's grey-level window)
    OUT/<label>/masks/<name>-<k>.png    the lesion's traced mask in the *source frame* (full image size), when the
                                        dataset has traced masks (BUSI); same file name as its ROI
    OUT/manifest.csv                    roi_file,source,label,group,box,site,tags  (box = "x0 y0 x1 y1", source
                                        frame, source relative to SRC; group = what must never be split across
                                        folds; site = the dataset / hospital; tags = the dataset's per-image
                                        flags, "name=value;...", e.g. BUS-UCLM calipers)
    OUT/prepare.json                    dataset, source root, margin, window, counts and skipped entries

ROIs are cut through the pipeline's one ROI code path (`imaging.roi.extract_roi`). Output is deterministic: cases
are visited in the reader's order and PNGs are written without metadata. `branet evaluate` finds the source image
of a mask through manifest.csv + prepare.json, so the segmenter is measured on the full image as in the pipeline.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from branet_pacs.datasets.cases import Case, load_gray
from branet_pacs.imaging.roi import (
    DEFAULT_LESION_BOX,
    DEFAULT_WINDOW,
    ROI_SIZE,
    Levels,
    extract_roi,
    roi_to_uint8,
    uint8_to_roi,
    window_levels,
)
from branet_pacs.types import Box

MANIFEST = "manifest.csv"
PREPARE_INFO = "prepare.json"
MANIFEST_COLUMNS = ("roi_file", "source", "label", "group", "box", "site", "tags")
CLASSES = ("benign", "malignant")
LABELS = {name: index for index, name in enumerate(CLASSES)}   # benign 0, malignant 1


# ------------------------------------------------------------------------------------------------------- writing
@dataclass
class PrepareReport:
    dataset: str
    source_root: str
    margin: float
    window: str = DEFAULT_WINDOW                            # ROI grey-level window (`imaging.roi.WINDOWS`)
    lesion_box: str = DEFAULT_LESION_BOX                    # what the boxes are (`imaging.roi.LESION_BOXES`)
    roi_size: int = ROI_SIZE                                # side of the square ROIs, pixels
    rois: Counter = field(default_factory=Counter)         # per label
    images: int = 0                                         # source images (cases) read
    skipped: list[str] = field(default_factory=list)        # human-readable reasons

    def as_dict(self) -> dict:
        return {"dataset": self.dataset, "source_root": self.source_root, "margin": self.margin,
                "window": self.window, "lesion_box": self.lesion_box, "roi_size": self.roi_size,
                "rois": dict(sorted(self.rois.items())),
                "images": self.images, "skipped_count": len(self.skipped), "skipped": self.skipped}


@dataclass(frozen=True)
class _Cut:
    """One ROI to cut: where it is and what it is."""

    source: Path
    name: str                        # output stem (unique within the label)
    label: str                       # benign | malignant | normal
    group: str
    box: Box
    mask: np.ndarray | None = None   # traced mask, source frame
    site: str = ""
    tags: str = ""
    row_scale: float = 1.0           # see Case.row_scale


def format_box(box: Box) -> str:
    return " ".join(str(int(v)) for v in box)


def parse_box(text: str) -> Box:
    values = [int(round(float(v))) for v in text.split()]
    if len(values) != 4:
        raise ValueError(f"box must be 'x0 y0 x1 y1', got {text!r}")
    return values[0], values[1], values[2], values[3]


def normal_window(path: Path) -> Box:
    """A lesion-free image's ROI: one centred square window of half its shorter side (deterministic)."""
    with Image.open(path) as im:
        w, h = im.size
    side = max(min(w, h) // 2, 8)
    x0, y0 = (w - side) // 2, (h - side) // 2
    return x0, y0, x0 + side, y0 + side


def format_tags(tags: dict[str, str]) -> str:
    return ";".join(f"{k}={v}" for k, v in sorted(tags.items()))


def parse_tags(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(";") if "=" in item)


def _cuts(cases: Iterable[Case], report: PrepareReport, normal_windows: bool) -> list[_Cut]:
    cuts: list[_Cut] = []
    for case in cases:
        report.images += 1
        report.skipped.extend(case.notes)
        stem = case.name.rsplit("/", 1)[-1]
        if not case.path.is_file():
            continue
        where = {"site": case.site or report.dataset, "tags": format_tags(case.tags)}
        if case.category == "normal":
            if normal_windows:
                cuts.append(_Cut(case.path, f"{stem}-1", "normal", case.group, normal_window(case.path), **where))
            continue
        for k, lesion in enumerate(case.lesions, start=1):
            if lesion.mask is None or not lesion.traced:   # a box annotated, not an outline's: so is the data's
                report.lesion_box = "prompt"
            cuts.append(_Cut(case.path, f"{stem}-{k}", lesion.label, case.group, lesion.box,
                             lesion.mask if lesion.traced else None, row_scale=case.row_scale, **where))
    return cuts


def _save_png(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG", optimize=False)


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} is not empty: choose an empty folder or pass --force")
        if not (out / PREPARE_INFO).exists():
            raise FileExistsError(f"{out} was not written by `branet prepare` (no {PREPARE_INFO}); not emptying it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def write_roi_dataset(cases: Iterable[Case], out: Path, report: PrepareReport, force: bool = False,
                      normal_windows: bool = False) -> PrepareReport:
    """Cut every lesion of `cases` through `extract_roi`; write PNGs (+ traced masks), manifest.csv, prepare.json.

    `normal_windows`: normal cases get one centred window each, written under normal/ (else they give no ROI)."""
    from tqdm import tqdm

    source_root = Path(report.source_root)
    cuts = _cuts(cases, report, normal_windows)
    _prepare_out(out, force)
    rows = []
    cache: tuple[Path, np.ndarray, Levels | None] | None = None
    for cut in tqdm(cuts, desc="ROIs", unit="roi", leave=False):
        if cache is None or cache[0] != cut.source:
            image = load_gray(cut.source, cut.row_scale)
            cache = (cut.source, image, window_levels(image, report.window))
        roi_file = f"{cut.label}/{cut.name}.png"
        roi = extract_roi(cache[1], cut.box, report.margin, cache[2], report.roi_size)
        _save_png(roi_to_uint8(roi), out / roi_file)
        if cut.mask is not None:
            _save_png(cut.mask.astype(np.uint8) * 255, out / cut.label / "masks" / f"{cut.name}.png")
        report.rois[cut.label] += 1
        rows.append({"roi_file": roi_file, "source": cut.source.relative_to(source_root).as_posix(),
                     "label": cut.label, "group": cut.group, "box": format_box(cut.box), "site": cut.site,
                     "tags": cut.tags})
    rows.sort(key=lambda r: r["roi_file"])
    with open(out / MANIFEST, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    (out / PREPARE_INFO).write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return report


# ------------------------------------------------------------------------------------------------------- reading
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


def list_roi_files(root: Path) -> list[tuple[str, int]]:
    """(file relative to root, label) for every `benign/*.png` and `malignant/*.png`, sorted; masks excluded."""
    root = Path(root)
    found = []
    for name, label in LABELS.items():
        folder = root / name
        if folder.is_dir():
            found.extend((f"{name}/{p.name}", label) for p in sorted(folder.glob("*.png")))
    if not found:
        raise FileNotFoundError(f"{root} holds no benign/*.png or malignant/*.png ROIs")
    return found


def roi_size_of(data_dir: Path) -> int:
    """The side of a ROI folder's ROIs (prepare.json "roi_size"; folders from before it was recorded: 128)."""
    return int(read_prepare_info(data_dir).get("roi_size", ROI_SIZE))


def read_roi_png(path: Path, size: int = ROI_SIZE) -> np.ndarray:
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("L"))
    if pixels.shape != (size, size):
        raise ValueError(f"{path}: ROI must be {size}x{size}, got {pixels.shape[1]}x{pixels.shape[0]} "
                         "(make ROIs with `branet prepare`)")
    return pixels


@dataclass(frozen=True)
class RoiSet:
    """ROIs of one or more folders: `files` (relative to their folder; `site/file` when several folders are merged),
    `pixels` uint8 (n, 128, 128), labels 0/1, fold groups, the site of each ROI and its tags.

    ROIs are small (16 KiB each), so a whole dataset is held as one uint8 array and batches are cut from it.
    """

    root: Path | None      # the folder (None for several merged folders)
    files: tuple[str, ...]
    pixels: np.ndarray
    labels: np.ndarray
    groups: tuple[str, ...]
    grouped: bool          # True when groups came from a manifest (else every ROI is its own group)
    sites: tuple[str, ...] = ()
    tags: tuple[dict[str, str], ...] = ()

    def __len__(self) -> int:
        return len(self.files)

    def as_float(self, index: np.ndarray | slice | None = None) -> np.ndarray:
        """ROIs in [-1, 1] float32 (the classifier's input), for `index` or all."""
        pixels = self.pixels if index is None else self.pixels[index]
        return uint8_to_roi(pixels)


    def subset(self, index: np.ndarray) -> "RoiSet":
        index = np.asarray(index)
        return RoiSet(None, tuple(self.files[i] for i in index), self.pixels[index], self.labels[index],
                      tuple(self.groups[i] for i in index), self.grouped, tuple(self.sites[i] for i in index),
                      tuple(self.tags[i] for i in index))


def load_roi_set(root: str | Path) -> RoiSet:
    """One ROI folder. Its site is the manifest's `site` column, else the dataset prepare.json names, else the
    folder's name."""
    root = Path(root)
    entries = list_roi_files(root)
    manifest = read_manifest(root)
    default_site = read_prepare_info(root).get("dataset") or root.name
    files = tuple(f for f, _ in entries)
    groups = tuple(manifest[f]["group"] if f in manifest and manifest[f].get("group") else f for f in files)
    sites = tuple((manifest.get(f, {}).get("site") or default_site) for f in files)
    tags = tuple(parse_tags(manifest.get(f, {}).get("tags") or "") for f in files)
    size = roi_size_of(root)
    pixels = np.stack([read_roi_png(root / f, size) for f in files])
    labels = np.array([label for _, label in entries], dtype=np.int64)
    return RoiSet(root, files, pixels, labels, groups, grouped=bool(manifest), sites=sites, tags=tags)


def load_roi_sets(roots: Iterable[str | Path]) -> RoiSet:
    """Several ROI folders as one set; with more than one, files and groups are prefixed by their site (a group
    never spans two sites), and every folder must name a different site."""
    sets = [load_roi_set(root) for root in roots]
    if len(sets) == 1:
        return sets[0]
    names = [s.sites[0] if s.sites else str(s.root) for s in sets]
    if len({s.pixels.shape[1:] for s in sets}) > 1:
        raise ValueError(f"the --data folders hold ROIs of different sizes {[s.pixels.shape[1] for s in sets]}")
    if len(set(names)) != len(names):
        raise ValueError(f"the --data folders must be different sites, got {names}")
    return RoiSet(None, tuple(f"{site}/{f}" for s in sets for f, site in zip(s.files, s.sites)),
                  np.concatenate([s.pixels for s in sets]), np.concatenate([s.labels for s in sets]),
                  tuple(f"{site}/{g}" for s in sets for g, site in zip(s.groups, s.sites)),
                  all(s.grouped for s in sets), tuple(x for s in sets for x in s.sites),
                  tuple(t for s in sets for t in s.tags))
