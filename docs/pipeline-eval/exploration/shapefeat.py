"""Exploration: BI-RADS-like shape / echo features of a lesion mask (here: the BUSI truth masks), for stacking with the CNN."""
import warnings; warnings.filterwarnings("ignore")
import json, glob, sys, numpy as np
from pathlib import Path
from skimage import measure, morphology
from branet_pacs.train.detector import iter_busi
from branet_pacs.train.image_eval import _roi_key

def features(image, mask):
    img = image.astype(np.float32)
    lab = measure.label(mask); props = max(measure.regionprops(lab), key=lambda p: p.area)
    m = lab == props.label
    y0, x0, y1, x1 = props.bbox; h, w = y1 - y0, x1 - x0
    area = props.area; per = max(props.perimeter, 1)
    hull = props.area_convex
    circ = 4 * np.pi * area / per ** 2
    # boundary roughness: perimeter of mask vs perimeter of smoothed mask
    sm = morphology.binary_opening(m, morphology.disk(max(2, int(0.05 * np.sqrt(area)))))
    per_s = max(measure.perimeter(sm), 1)
    ring = morphology.binary_dilation(m, morphology.disk(max(3, int(0.15 * np.sqrt(area))))) & ~m
    inside, around = img[m], img[ring]
    below = np.zeros_like(m); below[y1:min(img.shape[0], y1 + h), x0:x1] = True
    side = np.zeros_like(m); side[y1:min(img.shape[0], y1 + h), max(0, x0 - w):x0] = True; side[y1:min(img.shape[0], y1 + h), x1:min(img.shape[1], x1 + w)] = True
    post = (img[below].mean() - img[side].mean()) / (img.std() + 1e-3) if below.any() and side.any() else 0.0
    return [float(v) for v in (h / w, props.solidity, circ, props.extent, props.eccentricity, per / per_s,
            (inside.mean() - around.mean()) / (img.std() + 1e-3), inside.std() / (img.std() + 1e-3), post,
            np.log(area / img.size), 1 - area / hull)]
NAMES = "hw solidity circ extent ecc rough contrast heterog posterior logarea concavity".split()

if __name__ == "__main__":
    out = {}
    for c in iter_busi(Path("../shared/data/busi")):
        if c.category == "normal": continue
        out[c.name] = {"category": c.category, "truth": [features(c.image, m) for m in c.lesions]}
    json.dump(out, open("var/exp/shapefeat.json", "w"))
