"""Hand-made descriptors of a lesion from its box on the whole image: what a radiologist reads on a mass.

How dense the mass is against the tissue around it, how sharp its edge is, whether the tissue around it is pulled into
radial lines (spicules: their gradients run tangentially), and its texture. Read on the box's inscribed ellipse and a
ring around it, in a crop resized to a fixed side so that the numbers do not depend on pixel size or lesion size
(sizes in pixels would not carry between digitisers: the lesion's size is deliberately not among them).

On CBIS-DDSM masses these rank benign vs malignant better than the CNN or LiteMedSAM's embedding alone
(research/mg_cbis/texture_probe.py; figures in docs/mammography.md), which is why the MG feature head reads them
beside LiteMedSAM's features.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

from branet_pacs.imaging.geometry import square_crop
from branet_pacs.imaging.roi import stretch, tissue_levels
from branet_pacs.types import Box

NAME = "lesion-descriptors"
DESCRIPTION = ("hand-made lesion descriptors on the box's inscribed ellipse vs a ring around it, size-normalised crop: "
               "intensity, edge sharpness, radial/tangential gradient energy (spicules), GLCM, LBP (53)")
CROP = 96           # the crop's side after resizing
CONTEXT = 1.8       # crop side / the box's longer side
RING = 1.5          # the ring: outside the ellipse, inside RING x the ellipse
_GLCM_LEVELS = 64
_GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")
_LBP = ((8, 1), (16, 2))
VERSION = 1          # bump when a descriptor changes (training caches are keyed on it)
COUNT = 9 + 6 + 2 * len(_GLCM_PROPS) + sum(p + 2 for p, _ in _LBP)


def tissue_scale(pixels: np.ndarray) -> np.ndarray:
    """The image on its tissue's own 1st-99th percentile scale, clipped to [0, 1] (film and digital alike)."""
    return stretch(pixels, tissue_levels(pixels))


def _square_crop(image: np.ndarray, cx: float, cy: float, side: float) -> np.ndarray:
    """The square of `side` pixels centred on (cx, cy), black outside the image, resized to CROP x CROP."""
    crop, _ = square_crop(image.astype(np.float32, copy=False), cx, cy, max(int(round(side)), 8))
    return np.asarray(Image.fromarray(crop).resize((CROP, CROP), Image.BILINEAR), np.float32)


def lesion_descriptors(pixels: np.ndarray, box: Box, scaled: np.ndarray | None = None) -> np.ndarray:
    """(COUNT,) float32 for one lesion box (x0, y0, x1, y1) on a 2-D [0, 1] image. `scaled`: the image's
    `tissue_scale`, when several boxes of one image are described (it is the costly part)."""
    scaled = tissue_scale(pixels) if scaled is None else scaled
    x0, y0, x1, y1 = box
    bw, bh = max(x1 - x0, 2), max(y1 - y0, 2)
    side = max(bw, bh) * CONTEXT
    crop = _square_crop(scaled, (x0 + x1) / 2, (y0 + y1) / 2, side)
    yy, xx = np.mgrid[0:CROP, 0:CROP] + 0.5
    half = CROP / 2
    ax, ay = bw / side * half, bh / side * half          # the ellipse's half-axes in crop pixels
    r = np.sqrt(((xx - half) / ax) ** 2 + ((yy - half) / ay) ** 2)   # 1 on the ellipse
    inside, ring = r <= 1.0, (r > 1.0) & (r <= RING)
    edge, around = (r > 0.85) & (r <= 1.15), (r > 1.0) & (r <= 1.8)
    lesion, tissue = crop[inside], crop[ring]
    sd = float(lesion.std())

    gy, gx = np.gradient(ndimage.gaussian_filter(crop, 1.0))
    magnitude = np.hypot(gx, gy)
    ux, uy = (xx - half) / ax, (yy - half) / ay           # outward direction of the ellipse's level sets
    norm = np.hypot(ux, uy) + 1e-6
    radial = np.abs(gx * ux / norm + gy * uy / norm)
    tangential = np.sqrt(np.maximum(magnitude ** 2 - radial ** 2, 0.0))

    levels = ((crop - crop.min()) / max(float(crop.max() - crop.min()), 1e-6) * (_GLCM_LEVELS - 1)).astype(np.uint8)
    glcm = graycomatrix(levels, [1, 3], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=_GLCM_LEVELS,
                        symmetric=True, normed=True)
    texture = [graycoprops(glcm, prop).mean(axis=1) for prop in _GLCM_PROPS]
    patterns = [np.histogram(local_binary_pattern(levels, p, radius, "uniform")[inside | ring], bins=p + 2,
                             range=(0, p + 2), density=True)[0] for p, radius in _LBP]

    intensity = [lesion.mean(), sd, *np.percentile(lesion, (10, 50, 90)), tissue.mean(), tissue.std(),
                 (lesion.mean() - tissue.mean()) / (tissue.std() + 1e-3),
                 float(((lesion - lesion.mean()) ** 3).mean() / (sd ** 3 + 1e-6))]
    edges = [magnitude[edge].mean(), magnitude[edge].mean() / (magnitude[inside].mean() + 1e-6),
             magnitude[edge].std() / (magnitude[edge].mean() + 1e-6),
             tangential[around].sum() / (radial[around].sum() + 1e-6), tangential[around].mean(),
             radial[around].mean()]
    values = np.concatenate([intensity, edges, np.concatenate(texture), *patterns]).astype(np.float32)
    assert values.shape == (COUNT,)
    return np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
