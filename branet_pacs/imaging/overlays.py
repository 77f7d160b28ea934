"""Burned-in graphic marks on ultrasound frames (caliper crosses, dotted measurement lines), found and painted out.

Calipers are drawn by the scanner, not imaged: axis-aligned strokes one to three pixels wide, of one flat grey level,
brighter than the tissue around them (BUS-UCLM: 2-pixel arms of value 226 around a small gap). Tissue is speckled,
so a component of bright pixels that is an exact filled rectangle of a single value is a graphic. They sit on the
lesion border, where a classifier looks, and not on every frame: a model must not learn them.

`graphic_marks` returns the mask of such strokes; `paint_out` fills it from the surrounding tissue, so the ROI shows
(an estimate of) the tissue under the mark.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

MAX_STROKE_WIDTH = 3      # pixels across a stroke
MIN_STROKE_LENGTH = 3     # pixels along it
MAX_STROKE_AREA = 200     # a long measurement line is drawn dotted; a solid bright band is anatomy or a text box
MIN_CONTRAST = 0.25       # the stroke's grey level above the tissue around it (image in [0, 1])
FLAT = 1.5 / 255          # grey-level spread inside a stroke (a drawn graphic has one value)


def graphic_marks(image: np.ndarray) -> np.ndarray:
    """Bool mask (image shape) of the caliper-like strokes on a 2-D [0, 1] image."""
    image = np.asarray(image, dtype=np.float32)
    # white top-hat: what a 5x5 grey opening removes is thinner than 5 pixels and brighter than around it
    background = ndimage.grey_opening(image, size=(MAX_STROKE_WIDTH + 2, MAX_STROKE_WIDTH + 2))
    bright = image - background > MIN_CONTRAST
    labels, count = ndimage.label(bright)
    marks = np.zeros(image.shape, dtype=bool)
    if count == 0:
        return marks
    for index, where in enumerate(ndimage.find_objects(labels), start=1):
        if where is None:
            continue
        component = labels[where] == index
        h, w = component.shape
        area = int(component.sum())
        if not (min(h, w) <= MAX_STROKE_WIDTH and max(h, w) >= MIN_STROKE_LENGTH and area <= MAX_STROKE_AREA):
            continue
        if area != h * w:                                  # a drawn stroke fills its bounding box exactly
            continue
        values = image[where][component]
        if float(values.max() - values.min()) > FLAT:
            continue
        marks[where] |= component
    return marks


def paint_out(image: np.ndarray, marks: np.ndarray, grow: int = 1, sigma: float = 2.0) -> np.ndarray:
    """`image` with the `marks` (grown by `grow` pixels, for anti-aliased edges) filled from the tissue around them:
    a Gaussian-weighted mean of the unmarked neighbours (normalised convolution). Strokes are 1-3 pixels wide,
    so this is as good as slower inpainting and costs two Gaussian filters."""
    if not marks.any():
        return image
    mask = ndimage.binary_dilation(marks, iterations=grow) if grow else marks
    keep = (~mask).astype(np.float32)
    image = np.asarray(image, dtype=np.float32)
    weight = ndimage.gaussian_filter(keep, sigma)
    mean = ndimage.gaussian_filter(image * keep, sigma) / np.maximum(weight, 1e-6)
    out = image.copy()
    out[mask] = mean[mask]
    return np.clip(out, 0.0, 1.0)


def without_marks(image: np.ndarray) -> np.ndarray:
    """The image with its caliper-like marks painted out (unchanged when it has none)."""
    return paint_out(image, graphic_marks(image))
