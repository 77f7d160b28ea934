"""Exploration: shape/echo features of LiteMedSAM masks (truth-box prompt and OOF automatic top-1), full-res and ROI space."""
import json, sys, warnings; warnings.filterwarnings("ignore")
from pathlib import Path
import numpy as np
from skimage.transform import resize
from branet_pacs.models.runtime import configure_torch
from branet_pacs.models.segmenter import LiteMedSAMSegmenter
from branet_pacs.train.detector import iter_busi
from branet_pacs.imaging.roi import roi_window, crop_padded, extract_roi
sys.path.insert(0, str(Path(__file__).parent)); from shapefeat import features
configure_torch(1)
shard, nshard, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
auto = {json.loads(l)["name"]: json.loads(l) for f in ("var/exp/usj25-0.jsonl", "var/exp/usj25-1.jsonl") for l in open(f)}
seg = LiteMedSAMSegmenter("cpu")
def bbox(m):
    ys, xs = np.nonzero(m); return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
def both(image, mask):
    if not mask.any(): return None
    b = bbox(mask); w = roi_window(b, 0.15)
    rm = resize(crop_padded(mask.astype(np.float32), w), (128, 128), order=0, anti_aliasing=False) > 0.5
    roi = (extract_roi(image, b, 0.15) + 1) / 2
    return {"full": features(image, mask), "roi": features(roi, rm) if rm.any() else None,
            "mask_sum": int(mask.sum())}
cases = [c for c in iter_busi(Path("../shared/data/busi")) if c.category != "normal"][shard::nshard]
with open(out, "w") as fh:
    for i, c in enumerate(cases):
        emb = seg.embed(c.image.astype(np.float32))
        boxes = [bbox(m) for m in c.lesions]
        fs = auto[c.name]["findings"]
        prompts = boxes + ([tuple(fs[0]["pbox"])] if fs else [])
        masks = seg.decode(emb, prompts)
        rec = {"name": c.name, "category": c.category,
               "truthmask": [both(c.image, m) for m in c.lesions],
               "sam_truthbox": [both(c.image, m) for m in masks[:len(boxes)]],
               "sam_auto": both(c.image, masks[-1]) if fs else None}
        fh.write(json.dumps(rec) + "\n"); fh.flush()
        print(i, len(cases), flush=True)
