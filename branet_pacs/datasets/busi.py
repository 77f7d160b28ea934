"""BUSI (Al-Dhabyani et al. 2020): `SRC/<class>/<name>.png` with `SRC/<class>/masks/<name>_mask[_k].png`.

One mask file is one lesion (several masks = several lesions); `normal/` images have none. BUSI has no patient ids:
images with identical pixels share a group (named after the first of them in sorted order), so exact duplicates
never straddle folds; every other image is its own group.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from branet_pacs.datasets.cases import Case, Lesion, load_mask, natural_key
from branet_pacs.imaging.geometry import mask_box

SITE = "busi"
CITATION = ("BUSI — Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A. Dataset of breast ultrasound images. Data in Brief 28 "
            "(2020) 104863. doi:10.1016/j.dib.2019.104863 (CC BY 4.0).")
_MASK = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<k>\d+))?\.png$", re.IGNORECASE)


def read_busi(src: str | Path, include_normal: bool = True, site: str = SITE) -> Iterator[Case]:
    """Cases in class order (benign, malignant, normal), images in natural order within a class."""
    src = Path(src)
    classes = ["benign", "malignant"] + (["normal"] if include_normal else [])
    entries: list[tuple[str, Path, list[Path]]] = []
    for category in classes:
        folder = src / category
        if not folder.is_dir():
            raise FileNotFoundError(f"BUSI class folder missing: {folder}")
        mask_dir = folder / "masks" if (folder / "masks").is_dir() else folder
        masks_by_stem: dict[str, list[tuple[int, Path]]] = defaultdict(list)
        for mask_path in mask_dir.glob("*.png"):
            match = _MASK.match(mask_path.name)
            if match:
                masks_by_stem[match["stem"]].append((int(match["k"] or 0), mask_path))
        images = sorted((p for p in folder.glob("*.png") if not _MASK.match(p.name)), key=lambda p: natural_key(p.name))
        for image_path in images:
            entries.append((category, image_path, [p for _, p in sorted(masks_by_stem.get(image_path.stem, []))]))
    groups = duplicate_groups([path for _, path, _ in entries])
    for category, image_path, mask_paths in entries:
        yield _case(src, category, image_path, mask_paths, groups[image_path], site)


def _case(src: Path, category: str, image_path: Path, mask_paths: list[Path], group: str, site: str) -> Case:
    name = f"{category}/{image_path.stem}"
    if category == "normal":
        return Case(name, image_path, category, group, site=site)
    if not mask_paths:
        return Case(name, image_path, category, group, site=site,
                    notes=(f"{image_path.relative_to(src)}: no mask file",), all_lesions_known=False)
    lesions, notes = [], []
    with Image.open(image_path) as im:
        shape = (im.size[1], im.size[0])
    for mask_path in mask_paths:
        mask = load_mask(mask_path)
        if mask.shape != shape:
            raise ValueError(f"{mask_path}: mask shape {mask.shape} differs from its image {shape}")
        box = mask_box(mask)
        if box is None:
            notes.append(f"{mask_path.relative_to(src)}: empty mask")
            continue
        lesions.append(Lesion(category, box, mask))
    return Case(name, image_path, category, group, tuple(lesions), site, tuple(notes))


def duplicate_groups(paths: list[Path]) -> dict[Path, str]:
    """Images with identical pixels share a group named after the first of them in (class, file name) order."""
    first_by_digest: dict[str, str] = {}
    groups: dict[Path, str] = {}
    for path in sorted(paths, key=lambda p: (p.parent.name, p.name)):
        with Image.open(path) as im:
            digest = hashlib.sha256(np.asarray(im.convert("L")).tobytes()).hexdigest()
        groups[path] = first_by_digest.setdefault(digest, path.stem)
    return groups
