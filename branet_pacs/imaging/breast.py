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
_PECTORAL_SAFETY = 0.8   # the excluded triangle's width / the fitted muscle edge's (lesions abut the muscle)


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


def detection_region(pixels: np.ndarray, modality: str, view: str | None = None) -> np.ndarray | None:
    """Where lesions are looked for: the breast on a mammogram, less the pectoral muscle on an oblique (MLO) view
    (`pectoral_region`); None = the whole frame (ultrasound)."""
    if modality.upper() != "MG":
        return None
    breast = breast_mask(pixels)
    if (view or "").upper() == "MLO":
        breast &= ~pectoral_region(pixels, breast)
    return breast


# ------------------------------------------------------------------------------------ chest wall and pectoral muscle
def chest_wall_on_left(mask: np.ndarray) -> bool:
    """Whether the chest wall is on the left of the breast: of its bounding box's two vertical sides, the breast
    touches that one along more rows (films are often padded, so the image's own edges do not tell)."""
    cols = np.nonzero(mask.any(axis=0))[0]
    if cols.size == 0:
        return True
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    edge = max(1, (x1 - x0) // 50)
    return int(mask[:, x0:x0 + edge].any(axis=1).sum()) >= int(mask[:, x1 - edge:x1].any(axis=1).sum())


def pectoral_region(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Bool (h, w): the pectoral muscle of an MLO view, estimated as a triangle in the upper chest-wall corner; all
    False when no plausible one is found (a missed muscle only costs false findings, a wrong one hides lesions).

    On a copy at most 512 px per side with the chest wall turned to the left: the muscle is the bright band along the
    chest wall at the top. Otsu's threshold of the breast's upper chest-wall quarter splits it from the tissue below;
    the bright component touching the chest wall in the top rows is the muscle candidate, and a straight line is
    fitted to its edge row by row (trimmed least squares, three rounds). Accepted only when the line slants the way
    a muscle does (widest at the top, reaching the chest wall lower down), the triangle covers 2-40 % of the breast,
    and it is brighter than the tissue beside it. The excluded triangle stops at 80 % of the fitted edge's width.
    """
    h, w = mask.shape
    nothing = np.zeros((h, w), dtype=bool)
    cols = np.nonzero(mask.any(axis=0))[0]
    if cols.size < 20:
        return nothing
    x0, x1 = int(cols[0]), int(cols[-1]) + 1             # the breast's columns: chest wall at one side of them
    flip = not chest_wall_on_left(mask)
    image = np.nan_to_num(pixels[:, x0:x1].astype(np.float32, copy=False))
    region = mask[:, x0:x1]
    step = max(1, int(np.ceil(max(h, x1 - x0) / _WORK_SIZE)))
    small = ndimage.gaussian_filter(_block_mean(image[:, ::-1] if flip else image, step), 1.5)
    breast = _block_mean((region[:, ::-1] if flip else region).astype(np.float32), step) > 0.5
    rows = np.nonzero(breast.any(axis=1))[0]
    cols = np.nonzero(breast.any(axis=0))[0]
    if rows.size < 20 or cols.size < 20:
        return nothing
    top, bottom, right = int(rows[0]), int(rows[-1]), int(cols[-1])
    middle = top + int(0.6 * (bottom - top))
    corner = np.zeros_like(breast)
    corner[top:middle, :max(2, int(0.7 * right))] = True
    corner &= breast
    if corner.sum() < 50:
        return nothing
    bright = (small > float(threshold_otsu(small[corner]))) & corner
    bright = ndimage.binary_opening(bright, iterations=2)
    labels, count = ndimage.label(bright)
    seeds = labels[top:top + max(3, (bottom - top) // 20), :max(2, right // 10)]
    seed_labels = np.unique(seeds[seeds > 0])
    if seed_labels.size == 0:
        return nothing
    sizes = ndimage.sum_labels(bright, labels, index=seed_labels)
    muscle = ndimage.binary_fill_holes(labels == seed_labels[int(np.argmax(sizes))])
    ys, xs = [], []
    for y in range(top, middle):
        run = np.nonzero(muscle[y])[0]
        if run.size and run[0] <= max(2, right // 20):       # the row's band starts at the chest wall
            ys.append(y)
            xs.append(int(run[-1]))
    if len(ys) < 10:
        return nothing
    ys_a, xs_a = np.array(ys, dtype=np.float64), np.array(xs, dtype=np.float64)
    keep = np.ones(len(ys_a), dtype=bool)
    for _ in range(3):
        slope, intercept = np.polyfit(ys_a[keep], xs_a[keep], 1)
        residual = np.abs(xs_a - (slope * ys_a + intercept))
        keep = residual <= max(2.0, float(np.percentile(residual[keep], 70)))
    yy, xx = np.mgrid[0:small.shape[0], 0:small.shape[1]]
    line = slope * yy + intercept
    triangle = (xx < _PECTORAL_SAFETY * line) & breast     # a little inside the fitted edge: never past it
    beside = (xx >= line) & (xx < line + 0.15 * right) & breast & (yy <= middle)
    share = triangle.sum() / max(int(breast.sum()), 1)
    top_width = slope * top + intercept
    plausible = (slope < -0.1 and 0.05 * right < top_width < 0.9 * right and 0.02 <= share <= 0.40
                 and beside.sum() > 20 and float(small[triangle].mean()) > float(small[beside].mean()) + 0.02)
    if not plausible:
        return nothing
    part = np.repeat(np.repeat(triangle, step, axis=0), step, axis=1)[:h, :x1 - x0]
    part = np.pad(part, ((0, h - part.shape[0]), (0, x1 - x0 - part.shape[1])))
    full = nothing.copy()
    full[:, x0:x1] = part[:, ::-1] if flip else part
    return full & mask
