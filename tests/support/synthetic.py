"""Synthetic images written as dataset files (PNG), for tests of readers, detector training and evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from branet_pacs.datasets.cases import Case, Lesion
from branet_pacs.imaging.geometry import mask_box


def png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def blob_image(rng: np.random.Generator, lesion: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Speckle-like 8-bit background with one dark disk (a hypoechoic 'lesion') unless `lesion` is False;
    returns (pixels uint8, disk mask or None)."""
    h, w = int(rng.integers(70, 110)), int(rng.integers(70, 110))
    image = ndimage.gaussian_filter(rng.normal(0.5, 0.15, (h, w)), 1.5).astype(np.float32)
    disk = None
    if lesion:
        r = int(rng.integers(7, 13))
        cy, cx = int(rng.integers(r + 2, h - r - 2)), int(rng.integers(r + 2, w - r - 2))
        yy, xx = np.ogrid[:h, :w]
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        image[disk] = 0.08 + 0.03 * rng.random(int(disk.sum()))
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), disk


def blob_case(rng: np.random.Generator, folder: Path, name: str, lesion: bool = True,
              category: str | None = None, group: str | None = None) -> Case:
    """A blob image saved under `folder` as a dataset case (its disk is the traced lesion mask)."""
    pixels, disk = blob_image(rng, lesion)
    path = png(Path(folder) / f"{name}.png", pixels)
    category = category or ("benign" if lesion else "normal")
    lesions = (Lesion(category, mask_box(disk), disk),) if disk is not None else ()
    return Case(name, path, category, group or name, lesions, site="synthetic")
