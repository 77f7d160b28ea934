"""The one ROI code path: pipeline, `branet prepare`, training and evaluation all cut ROIs here.

A ROI is the lesion box widened by a context margin, made square around its centre (so the lesion keeps its
aspect ratio), padded with black where it leaves the image, put on a grey-level window, resized to 128x128 (the
BraNet size; `branet prepare --roi-size` can make larger ones, recorded in the model's manifest entry) and mapped to
[-1, 1] (mean 0.5, std 0.5, as in the BraNet paper).

The window (`WINDOWS`) is how the ROI's grey levels are set:
- "roi": stretched to the crop's own 1st-99th percentiles (gain and dynamic-range differences between scanners
  matter less; the default, and what the ultrasound models use);
- "tissue": the whole image's breast-tissue 1st-99th percentiles (`tissue_levels`), so a mass keeps how dense it is
  against the rest of the breast, which the crop's own stretch throws away (film and digital mammograms alike: the
  window follows each image's own tissue, not fixed values).
"""

from __future__ import annotations

import numpy as np
from skimage.transform import resize

from branet_pacs.types import Box

ROI_SIZE = 128
DEFAULT_MARGIN = 0.15
WINDOW_DESCRIPTIONS = {      # what each grey-level window maps onto [0, 1] (prepare's help, manifest, model card)
    "roi": "each crop's own 1st-99th percentiles",
    "tissue": "the whole image's breast-tissue 1st-99th percentiles (a mass keeps its density against the breast)",
}
WINDOWS = tuple(WINDOW_DESCRIPTIONS)
DEFAULT_WINDOW = "roi"
# Which box of a finding a classifier reads, after what its training ROIs were cut on (prepare.json "lesion_box",
# manifest input "lesion_box"): the automatic path should hand it the kind of box it learned from.
LESION_BOX_DESCRIPTIONS = {
    "mask": "the box of the lesion's traced outline; at inference the segmenter's mask box (BUSI, BUS-UCLM)",
    "prompt": "the annotated box (no outline; its inscribed ellipse as the lesion mask); at inference the "
              "detector's or the user's box, which the detector learned from the same annotations (CBIS-DDSM)",
}
LESION_BOXES = tuple(LESION_BOX_DESCRIPTIONS)
DEFAULT_LESION_BOX = "mask"
TISSUE_FLOOR = 0.04      # pixels above this are breast tissue for the "tissue" window (0 = background)


def roi_window(box: Box, margin: float = DEFAULT_MARGIN) -> Box:
    """Square window around `box`, widened by `margin` of the box size on every side (may leave the image)."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)
    side = max(int(round(side)), 8)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    wx0, wy0 = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    return wx0, wy0, wx0 + side, wy0 + side


def crop_padded(image: np.ndarray, window: Box) -> np.ndarray:
    """Crop `window` from a 2-D image, padding with zeros outside it."""
    x0, y0, x1, y1 = window
    h, w = image.shape
    out = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


Levels = tuple[float, float]     # (low, high) grey levels mapped onto 0 and 1


def tissue_levels(image: np.ndarray) -> Levels:
    """The 1st-99th percentiles of the image's tissue (pixels above TISSUE_FLOOR; all pixels if there are few)."""
    tissue = image[image > TISSUE_FLOOR]
    lo, hi = np.percentile(tissue if tissue.size > 1000 else image, (1.0, 99.0))
    return float(lo), float(hi)


def window_levels(image: np.ndarray, window: str = DEFAULT_WINDOW) -> Levels | None:
    """The levels every ROI of `image` shares under `window`; None for "roi" (each crop its own)."""
    if window not in WINDOWS:
        raise ValueError(f"unknown ROI window {window!r} (one of {', '.join(WINDOWS)})")
    return tissue_levels(image) if window == "tissue" else None


def stretch(crop: np.ndarray, levels: Levels | None = None) -> np.ndarray:
    """Map `levels` (default: the crop's own 1st-99th percentiles) onto [0, 1], clipped."""
    lo, hi = np.percentile(crop, (1.0, 99.0)) if levels is None else levels
    if hi - lo < 1e-6:
        return np.zeros_like(crop, dtype=np.float32)
    return np.clip((crop - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def extract_roi(image: np.ndarray, box: Box, margin: float = DEFAULT_MARGIN,
                levels: Levels | None = None, size: int = ROI_SIZE) -> np.ndarray:
    """ROI tensor (size, size) float32 in [-1, 1] for the lesion `box` on `image` (2-D, float in [0, 1]).
    `levels`: the image's shared grey-level window (`window_levels`); None stretches the crop to its own."""
    if image.ndim != 2:
        raise ValueError(f"extract_roi expects a 2-D grayscale image, got shape {image.shape}")
    crop = crop_padded(image.astype(np.float32, copy=False), roi_window(box, margin))
    small = resize(stretch(crop, levels), (size, size), order=1, anti_aliasing=True, preserve_range=True)
    return ((small.astype(np.float32) - 0.5) / 0.5).clip(-1.0, 1.0)


def roi_to_uint8(roi: np.ndarray) -> np.ndarray:
    """A [-1, 1] ROI as an 8-bit image (for PNG datasets and thumbnails)."""
    return np.round((roi + 1.0) * 127.5).clip(0, 255).astype(np.uint8)


def uint8_to_roi(pixels: np.ndarray) -> np.ndarray:
    """Inverse of roi_to_uint8: an 8-bit ROI PNG back to the classifier's [-1, 1] float input."""
    return (pixels.astype(np.float32) / 127.5 - 1.0).clip(-1.0, 1.0)
