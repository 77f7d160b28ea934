"""SNGAN training and scoring sets: ROI folders in ImageFolder layout (DIR/<class>/*.png, as `branet prepare` writes
them; `masks/` sub-folders are ignored), resized to the GAN's image size, or plain folders of generated images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from branet_pacs.imaging.roi import uint8_to_roi
from branet_pacs.sngan.networks import CLASSES

IMAGE_SUFFIXES = (".png",)


@dataclass(frozen=True)
class RoiSet:
    """ROIs in memory: images (N, 1, S, S) float32 in [-1, 1], labels (N,) int64 indexing CLASSES."""

    images: torch.Tensor
    labels: torch.Tensor
    files: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self) -> dict[str, int]:
        return {name: int((self.labels == i).sum()) for i, name in enumerate(CLASSES)}


def list_image_files(root: str | Path, classes: tuple[str, ...] = CLASSES) -> list[tuple[Path, int]]:
    """(file, class index) for every PNG directly inside root/<class>/, sorted for a stable order.

    A folder without class sub-folders is read as one unlabelled set (class index -1), so `score` can compare
    plain folders of generated images too.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ROI folder not found: {root}")
    found: list[tuple[Path, int]] = []
    present = [c for c in classes if (root / c).is_dir()]
    if present:
        for name in present:
            index = classes.index(name)
            found += [(p, index) for p in sorted((root / name).iterdir())
                      if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    else:
        found = [(p, -1) for p in sorted(root.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not found:
        raise FileNotFoundError(f"no PNG ROIs under {root} (expected {root}/benign/*.png, {root}/malignant/*.png)")
    return found


def read_gray_uint8(path: str | Path) -> np.ndarray:
    """A PNG as a 2-D uint8 array (converted to 8-bit grayscale when stored otherwise)."""
    with Image.open(path) as image:
        if image.mode != "L":
            image = image.convert("L")
        return np.asarray(image, dtype=np.uint8).copy()


def resize_uint8(pixels: np.ndarray, size: int) -> np.ndarray:
    if pixels.shape == (size, size):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def load_roi_set(root: str | Path, image_size: int) -> RoiSet:
    """All labelled ROIs under root as one in-memory set (resized with PIL bicubic when not image_size)."""
    entries = [(p, c) for p, c in list_image_files(root) if c >= 0]
    if not entries:
        raise FileNotFoundError(f"{root} has no benign/ or malignant/ sub-folder with PNG ROIs")
    arrays = [uint8_to_roi(resize_uint8(read_gray_uint8(p), image_size)) for p, _ in entries]
    images = torch.from_numpy(np.stack(arrays)[:, None])
    labels = torch.tensor([c for _, c in entries], dtype=torch.int64)
    return RoiSet(images=images, labels=labels, files=tuple(str(p) for p, _ in entries))
