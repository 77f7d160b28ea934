"""Exploration: OOF per-proposal records for alternative image-score rules (not part of the product)."""
import json, sys, dataclasses
from pathlib import Path
import numpy as np
from branet_pacs.config import load_config
from branet_pacs.pipeline import Analyzer, Prompt, _distinct_lesions
from branet_pacs.imaging.geometry import box_iou, mask_box
from branet_pacs.imaging.roi import extract_roi
from branet_pacs.train.image_eval import OutOfFoldModels, _breast_image
from branet_pacs.train.detector import iter_busi, iter_mias

data, shard, nshard, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
src = Path("../shared/data") / data
modality = "US" if data == "busi" else "MG"
cases = list(iter_busi(src) if data == "busi" else iter_mias(src))
models = Path(sys.argv[5] if len(sys.argv) > 5 else "models").resolve()
config = dataclasses.replace(load_config(), models_dir=str(models))
an = Analyzer(config)
oof = OutOfFoldModels(models, modality, cases, "cpu")
chosen = [c for c in cases if c.category != "normal"][shard::nshard]
MARGINS = [0.05, 0.15, 0.3, 0.5]
with open(out, "w") as fh:
    for i, case in enumerate(chosen):
        oof.configure(an, case, modality)
        img = _breast_image(case, modality)
        det = an.detector(modality)
        clf = an.classifier(modality)
        props = det.propose(img.pixels, valid_mask=img.breast_mask, max_proposals=5, min_score=0.02)
        prompts = [Prompt(p.box, float(p.score), "auto") for p in props]
        masks = an.segmenter().segment(img.pixels, [p.box for p in prompts]) if prompts else []
        kept = _distinct_lesions(img, prompts, masks)
        truth = [mask_box(m) for m in case.lesions]
        rec = {"name": case.name, "category": case.category, "findings": []}
        for prompt, mask, box in kept:
            rois = [extract_roi(img.pixels, box, m) for m in MARGINS] + [extract_roi(img.pixels, prompt.box, 0.15)]
            p = clf.predict(np.stack(rois))
            rec["findings"].append({"score": prompt.score, "box": list(map(int, box)), "pbox": list(map(int, prompt.box)),
                                    "iou": max((box_iou(box, t) for t in truth if t), default=0.0),
                                    "p": [float(x) for x in p], "area": int(mask.sum())})
        tb = [t for t in truth if t]
        rec["p_truth"] = [float(x) for x in clf.predict(np.stack([extract_roi(img.pixels, t, 0.15) for t in tb]))] if tb else []
        rec["shape"] = list(img.pixels.shape)
        fh.write(json.dumps(rec) + "\n"); fh.flush()
        print(i, len(chosen), case.name, flush=True)
