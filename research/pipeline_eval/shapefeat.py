"""Eleven BI-RADS-like descriptors of a lesion mask (orientation, solidity, circularity, extent, eccentricity, margin
roughness, concavity, echo contrast and heterogeneity, posterior shadowing, relative size), here on the BUSI truth
masks -> var/exp/shapefeat.json.

    python research/pipeline_eval/shapefeat.py
"""
import json
import warnings

import numpy as np
from skimage import measure, morphology

from common import cases

NAMES = "hw solidity circ extent ecc rough contrast heterog posterior logarea concavity".split()


def features(image: np.ndarray, mask: np.ndarray) -> list[float]:
    img = image.astype(np.float32)
    labels = measure.label(mask)
    props = max(measure.regionprops(labels), key=lambda p: p.area)
    m = labels == props.label
    y0, x0, y1, x1 = props.bbox
    h, w = y1 - y0, x1 - x0
    area, perimeter = props.area, max(props.perimeter, 1)
    circularity = 4 * np.pi * area / perimeter ** 2
    # boundary roughness: perimeter of the mask vs perimeter of the smoothed mask
    smooth = morphology.binary_opening(m, morphology.disk(max(2, int(0.05 * np.sqrt(area)))))
    perimeter_smooth = max(measure.perimeter(smooth), 1)
    ring = morphology.binary_dilation(m, morphology.disk(max(3, int(0.15 * np.sqrt(area))))) & ~m
    inside, around = img[m], img[ring]
    below = np.zeros_like(m)
    below[y1:min(img.shape[0], y1 + h), x0:x1] = True
    side = np.zeros_like(m)
    side[y1:min(img.shape[0], y1 + h), max(0, x0 - w):x0] = True
    side[y1:min(img.shape[0], y1 + h), x1:min(img.shape[1], x1 + w)] = True
    posterior = (img[below].mean() - img[side].mean()) / (img.std() + 1e-3) if below.any() and side.any() else 0.0
    return [float(v) for v in (h / w, props.solidity, circularity, props.extent, props.eccentricity,
                               perimeter / perimeter_smooth, (inside.mean() - around.mean()) / (img.std() + 1e-3),
                               inside.std() / (img.std() + 1e-3), posterior, np.log(area / img.size),
                               1 - area / props.area_convex)]


def main(argv: list[str] | None = None) -> None:
    warnings.filterwarnings("ignore")
    out = {}
    for case in cases("busi"):
        if case.category == "normal":
            continue
        image = case.pixels()
        out[case.name] = {"category": case.category,
                          "truth": [features(image, lesion.mask) for lesion in case.lesions]}
    json.dump(out, open("var/exp/shapefeat.json", "w"))


if __name__ == "__main__":
    main()
