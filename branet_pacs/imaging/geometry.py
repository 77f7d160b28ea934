"""Mask geometry: bounding boxes and outline polygons (for SR SCOORDs)."""

from __future__ import annotations

import numpy as np
from skimage import measure

from branet_pacs.types import Box


def mask_box(mask: np.ndarray) -> Box | None:
    """Tight (x0, y0, x1, y1) box of a boolean mask, exclusive end; None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def box_ellipse_mask(shape: tuple[int, int], box: Box) -> np.ndarray:
    """Bool mask of the ellipse inscribed in `box` (x0, y0, x1, y1, exclusive end), clipped to `shape` (rows, cols):
    the stand-in outline of a lesion known only by its box (CBIS-DDSM masses), whose tight box is `box` again."""
    x0, y0, x1, y1 = box
    rows = (np.arange(shape[0]) + 0.5 - (y0 + y1) / 2) / max((y1 - y0) / 2, 0.5)
    cols = (np.arange(shape[1]) + 0.5 - (x0 + x1) / 2) / max((x1 - x0) / 2, 0.5)
    return rows[:, None] ** 2 + cols[None, :] ** 2 <= 1.0


def box_mask(shape: tuple[int, int], box: Box) -> np.ndarray:
    """Bool mask of `shape` (rows, cols), True inside `box` (x0, y0, x1, y1, exclusive end) clipped to the image: the
    stand-in lesion mask when a segmenter returns an empty one for its box."""
    x0, y0, x1, y1 = (max(int(v), 0) for v in box)
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def square_crop(image: np.ndarray, cx: float, cy: float, side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The `side` x `side` square of a 2-D image centred on (cx, cy), zeros where it leaves the image, and its
    top-left corner (x, y) in image coordinates (subtract it from a box to move the box into the crop)."""
    h, w = image.shape
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    out = np.zeros((side, side), image.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out, (x0, y0)


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels = measure.label(mask, connectivity=2)
    if labels.max() <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def mask_outline(mask: np.ndarray, max_points: int = 64) -> np.ndarray:
    """Closed polygon (n, 2) of (column, row) points around the largest component; first point == last.

    Points are pixel-centre coordinates as DICOM SCOORD expects (column, row), simplified to at most
    `max_points` vertices.
    """
    component = largest_component(mask)
    padded = np.pad(component, 1).astype(np.float32)
    contours = measure.find_contours(padded, 0.5)
    if not contours:
        raise ValueError("empty mask has no outline")
    contour = max(contours, key=len) - 1.0  # undo the pad; (row, col)
    tolerance = 0.5
    poly = measure.approximate_polygon(contour, tolerance)
    while len(poly) > max_points:
        tolerance *= 1.5
        poly = measure.approximate_polygon(contour, tolerance)
    poly = poly[:, ::-1]  # -> (col, row)
    h, w = mask.shape
    poly[:, 0] = poly[:, 0].clip(0, w - 1)
    poly[:, 1] = poly[:, 1].clip(0, h - 1)
    if not np.array_equal(poly[0], poly[-1]):
        poly = np.vstack([poly, poly[:1]])
    return poly.astype(np.float64)


def box_iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
