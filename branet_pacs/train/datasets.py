"""ImageFolder ROI datasets in memory, and batch augmentation suited to ultrasound and mammography ROIs.

A dataset folder holds `benign/*.png` and `malignant/*.png` (128x128 8-bit ROIs written with `roi_to_uint8`),
optionally `manifest.csv` (from `branet prepare`) whose `group` column says which ROIs must stay in one fold.
ROIs are small (16 KiB each), so a whole dataset is held as one uint8 array and batches are cut from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from branet_pacs.imaging.roi import ROI_SIZE, uint8_to_roi
from branet_pacs.train.prepare import CLASSES, read_manifest

LABELS = {name: index for index, name in enumerate(CLASSES)}   # benign 0, malignant 1


@dataclass(frozen=True)
class RoiSet:
    """ROIs of one folder: `files` relative to `root`, `pixels` uint8 (n, 128, 128), labels 0/1, groups."""

    root: Path
    files: tuple[str, ...]
    pixels: np.ndarray
    labels: np.ndarray
    groups: tuple[str, ...]
    grouped: bool          # True when groups came from a manifest (else every ROI is its own group)

    def __len__(self) -> int:
        return len(self.files)

    def as_float(self, index: np.ndarray | slice | None = None) -> np.ndarray:
        """ROIs in [-1, 1] float32 (the classifier's input), for `index` or all."""
        pixels = self.pixels if index is None else self.pixels[index]
        return uint8_to_roi(pixels)


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


def read_roi_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("L"))
    if pixels.shape != (ROI_SIZE, ROI_SIZE):
        raise ValueError(f"{path}: ROI must be {ROI_SIZE}x{ROI_SIZE}, got {pixels.shape[1]}x{pixels.shape[0]} "
                         "(make ROIs with `branet prepare`)")
    return pixels


def load_roi_set(root: str | Path) -> RoiSet:
    root = Path(root)
    entries = list_roi_files(root)
    manifest = read_manifest(root)
    files = tuple(f for f, _ in entries)
    groups = tuple(manifest[f]["group"] if f in manifest and manifest[f].get("group") else f for f in files)
    pixels = np.stack([read_roi_png(root / f) for f in files])
    labels = np.array([label for _, label in entries], dtype=np.int64)
    return RoiSet(root, files, pixels, labels, groups, grouped=bool(manifest))


# --------------------------------------------------------------------------------------------- augmentation
@dataclass(frozen=True)
class AugmentSettings:
    """Ranges of the random transforms; one set per modality (see `augment_settings`)."""

    hflip: bool = True
    vflip: bool = False
    rot90: bool = False
    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.06          # fraction of the ROI side
    contrast: tuple[float, float] = (0.8, 1.25)
    brightness: float = 0.08         # additive, on the [0, 1] scale
    gamma: tuple[float, float] = (0.75, 1.35)
    speckle: float = 0.0             # sd of multiplicative noise (ultrasound speckle)
    noise: float = 0.02              # sd of additive Gaussian noise


def augment_settings(modality: str, roi_jitter: float = 0.0) -> AugmentSettings:
    """US: left-right flips only (skin is at the top of every US image), speckle-like multiplicative noise.
    MG: a lesion has no up/down or rotation meaning on a film, so flips both ways and 90° turns; no speckle.

    `roi_jitter` > 0 widens zoom to 1/(1+j)..(1+j) and shift to j/2 of the side: ROIs cut from ground-truth boxes
    then look like ROIs cut from automatically found boxes, which are off by about that much.
    """
    base = AugmentSettings(speckle=0.12) if modality.lower() == "us" else \
        AugmentSettings(vflip=True, rot90=True, rotate_deg=15.0)
    if roi_jitter <= 0:
        return base
    return replace(base, scale=(min(base.scale[0], 1.0 / (1.0 + roi_jitter)), max(base.scale[1], 1.0 + roi_jitter)),
                   translate=max(base.translate, roi_jitter / 2.0))


def augment(batch: torch.Tensor, settings: AugmentSettings, generator: torch.Generator) -> torch.Tensor:
    """Random geometric + intensity transforms of a batch (n, 1, H, W) in [-1, 1]; returns a new tensor."""
    n = batch.shape[0]
    device = batch.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator).to(device)

    x = batch
    if settings.hflip:
        flip = torch.rand(n, generator=generator).to(device) < 0.5
        x = torch.where(flip[:, None, None, None], torch.flip(x, dims=(-1,)), x)
    if settings.vflip:
        flip = torch.rand(n, generator=generator).to(device) < 0.5
        x = torch.where(flip[:, None, None, None], torch.flip(x, dims=(-2,)), x)
    angle = uniform(-settings.rotate_deg, settings.rotate_deg) * math.pi / 180.0
    if settings.rot90:
        angle = angle + torch.randint(0, 4, (n,), generator=generator).to(device) * (math.pi / 2)
    scale = torch.exp(uniform(math.log(settings.scale[0]), math.log(settings.scale[1])))
    tx, ty = uniform(-settings.translate, settings.translate) * 2, uniform(-settings.translate, settings.translate) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    x = (x + 1.0) / 2.0   # [0, 1]
    gamma = torch.exp(uniform(math.log(settings.gamma[0]), math.log(settings.gamma[1])))[:, None, None, None]
    x = x.clamp(0.0, 1.0) ** gamma
    contrast = torch.exp(uniform(math.log(settings.contrast[0]), math.log(settings.contrast[1])))
    brightness = uniform(-settings.brightness, settings.brightness)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast[:, None, None, None] + mean + brightness[:, None, None, None]
    if settings.speckle > 0:
        sd = uniform(0.0, settings.speckle)[:, None, None, None]
        x = x * (1.0 + sd * torch.randn(x.shape, generator=generator).to(device))
    if settings.noise > 0:
        sd = uniform(0.0, settings.noise)[:, None, None, None]
        x = x + sd * torch.randn(x.shape, generator=generator).to(device)
    return (x.clamp(0.0, 1.0) * 2.0 - 1.0).contiguous()
