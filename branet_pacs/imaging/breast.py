"""Mammogram breast foreground mask, and the region a lesion detector may look at (`detection_region`).

Method: on a copy downsampled to at most 512 px per side and lightly smoothed, threshold halfway between the
background (air) level and Otsu's threshold. Otsu alone splits fatty from dense tissue when the air background is
small, and cuts off the faint skin line; halfway to the air level keeps the whole breast while still rejecting
detector noise. Then keep the largest connected component (drops burned-in labels and markers, which are not
connected to the breast), fill its holes, and scale the mask back to full size (nearest neighbour).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

_WORK_SIZE = 512


def breast_mask(pixels: np.ndarray) -> np.ndarray:
    """Bool (h, w) foreground mask of a 2-D mammogram (float, bright = dense, air dark)."""
    if pixels.ndim != 2:
        raise ValueError(f"breast_mask expects a 2-D image, got shape {pixels.shape}")
    image = np.nan_to_num(pixels.astype(np.float32, copy=False))
    if image.size == 0 or float(image.max() - image.min()) < 1e-6:
        return np.ones(image.shape, dtype=bool)   # nothing to separate: treat all as breast

    step = max(1, int(np.ceil(max(image.shape) / _WORK_SIZE)))
    small = _block_mean(image, step)
    small = ndimage.gaussian_filter(small, sigma=1.0)
    otsu = float(threshold_otsu(small))
    air = float(np.median(small[small <= otsu]))
    foreground = small > air + 0.5 * (otsu - air)

    labels, count = ndimage.label(foreground)
    if count == 0:
        return np.ones(image.shape, dtype=bool)
    sizes = ndimage.sum_labels(foreground, labels, index=np.arange(1, count + 1))
    largest = labels == (int(np.argmax(sizes)) + 1)
    largest = ndimage.binary_fill_holes(largest)

    full = np.repeat(np.repeat(largest, step, axis=0), step, axis=1)
    return np.ascontiguousarray(full[:image.shape[0], :image.shape[1]])


def _block_mean(image: np.ndarray, step: int) -> np.ndarray:
    """Mean over step x step blocks (edge blocks padded by replication)."""
    if step == 1:
        return image
    h, w = image.shape
    ph, pw = -h % step, -w % step
    padded = np.pad(image, ((0, ph), (0, pw)), mode="edge")
    return padded.reshape(padded.shape[0] // step, step, padded.shape[1] // step, step).mean(axis=(1, 3))


def detection_region(pixels: np.ndarray, modality: str) -> np.ndarray | None:
    """Where lesions are looked for: the breast on a mammogram (None = the whole frame, e.g. ultrasound)."""
    return breast_mask(pixels) if modality.upper() == "MG" else None
