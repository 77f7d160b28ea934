"""BUSI (Al-Dhabyani et al. 2020): `SRC/<class>/<name>.png` with `SRC/<class>/masks/<name>_mask[_k].png`.

One mask file is one lesion (several masks = several lesions); `normal/` images have none. BUSI has no patient ids:
images with identical pixels share a group (named after the first of them in sorted order), so exact duplicates
never straddle folds; every other image is its own group. `read_busi_layout` reads any dataset in this layout
(BUS-UCLM uses it) with its own grouping.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
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
    """BUSI cases in class order (benign, malignant, normal), images in natural order within a class."""
    return read_busi_layout(src, include_normal, site, duplicate_groups)


def read_busi_layout(src: str | Path, include_normal: bool, site: str,
                     grouping: Callable[[list[Path]], dict[Path, str]],
                     tags: Callable[[Path], dict[str, str]] | None = None) -> Iterator[Case]:
    """Cases of a dataset in the BUSI layout; `grouping` names every image's fold group, `tags` its flags."""
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
    groups = grouping([path for _, path, _ in entries])
    for category, image_path, mask_paths in entries:
        yield _case(src, category, image_path, mask_paths, groups[image_path], site,
                    tags(image_path) if tags else {})


def _case(src: Path, category: str, image_path: Path, mask_paths: list[Path], group: str, site: str,
          tags: dict[str, str]) -> Case:
    name = f"{category}/{image_path.stem}"
    if category == "normal":
        return Case(name, image_path, category, group, site=site, tags=tags)
    if not mask_paths:
        return Case(name, image_path, category, group, site=site, tags=tags,
                    notes=(f"{image_path.relative_to(src)}: no mask file",), all_lesions_known=False)
    lesions, notes = [], []
    with Image.open(image_path) as im:
        shape = (im.size[1], im.size[0])
    for mask_path in mask_paths:
        mask = load_mask(mask_path)
        if mask.shape != shape:   # BUS-UCLM has a few: the image was cropped after the outline was drawn
            notes.append(f"{mask_path.relative_to(src)}: mask is {mask.shape[1]}x{mask.shape[0]}, its image "
                         f"{shape[1]}x{shape[0]} (the outline cannot be placed)")
            return Case(name, image_path, category, group, (), site, tuple(notes), all_lesions_known=False,
                        tags=tags)
        box = mask_box(mask)
        if box is None:
            notes.append(f"{mask_path.relative_to(src)}: empty mask")
            continue
        lesions.append(Lesion(category, box, mask))
    return Case(name, image_path, category, group, tuple(lesions), site, tuple(notes), tags=tags)


def duplicate_groups(paths: list[Path]) -> dict[Path, str]:
    """Images with identical pixels share a group named after the first of them in (class, file name) order."""
    first_by_digest: dict[str, str] = {}
    groups: dict[Path, str] = {}
    for path in sorted(paths, key=lambda p: (p.parent.name, p.name)):
        with Image.open(path) as im:
            digest = hashlib.sha256(np.asarray(im.convert("L")).tobytes()).hexdigest()
        groups[path] = first_by_digest.setdefault(digest, path.stem)
    return groups
