"""Detector top score on BUSI normal images (out of fold) vs lesion images (from explore records)."""
import json, dataclasses
from pathlib import Path
import numpy as np
from branet_pacs.train.image_eval import OutOfFoldModels, _breast_image
from branet_pacs.train.detector import iter_busi
cases = list(iter_busi(Path("../shared/data/busi")))
oof = OutOfFoldModels(Path("models").resolve(), "US", cases, "cpu")
normal = []
for c in cases:
    if c.category != "normal":
        continue
    img = _breast_image(c, "US")
    props = oof.detector_of[c.name].propose(img.pixels, max_proposals=1, min_score=0.0)
    normal.append(props[0].score if props else 0.0)
les = {}
for f in ("var/exp/usj25-0.jsonl", "var/exp/usj25-1.jsonl"):
    for l in open(f):
        r = json.loads(l); les[r["name"]] = (r["category"], r["findings"][0]["score"] if r["findings"] else 0.0)
normal = np.array(normal)
for floor in (0.02, 0.1, 0.2, 0.3, 0.5):
    mal = [s for c, s in les.values() if c == "malignant"]; ben = [s for c, s in les.values() if c == "benign"]
    print(f"floor {floor}: normal with finding {np.mean(normal >= floor):.3f}  malignant {np.mean(np.array(mal) >= floor):.3f}  benign {np.mean(np.array(ben) >= floor):.3f}")
