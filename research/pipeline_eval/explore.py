"""Out of fold, per image: up to 5 detector candidates (score >= 0.02), their LiteMedSAM mask boxes, IoU with the
truth, and p(malignant) of ROIs cut at margins 0.05/0.15/0.3/0.5 and on the raw proposal box, plus p on the true boxes.

    python research/pipeline_eval/explore.py busi|mias SHARD NSHARD OUT.jsonl [MODELS_DIR]
"""
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from branet_pacs.config import load_config
from branet_pacs.datasets.readers import modality_of
from branet_pacs.evaluation.images import OutOfFoldModels, breast_image
from branet_pacs.imaging.geometry import box_iou, mask_box
from branet_pacs.imaging.roi import extract_roi
from branet_pacs.pipeline import Analyzer, Prompt, distinct_lesions

from common import cases

MARGINS = [0.05, 0.15, 0.3, 0.5]


def main(argv: list[str]) -> None:
    data, shard, nshard, out = argv[0], int(argv[1]), int(argv[2]), argv[3]
    modality = modality_of(data)
    images = cases(data)
    models = Path(argv[4] if len(argv) > 4 else "models").resolve()
    analyzer = Analyzer(dataclasses.replace(load_config(), models_dir=str(models)))
    oof = OutOfFoldModels(models, modality, images, "cpu")
    chosen = [c for c in images if c.category != "normal"][shard::nshard]
    with open(out, "w") as handle:
        for i, case in enumerate(chosen):
            oof.configure(analyzer, case, modality)
            image = breast_image(case, modality)
            classifier = analyzer.classifier(modality)
            proposals = analyzer.detector(modality).propose(image.pixels, valid_mask=image.breast_mask,
                                                            max_proposals=5, min_score=0.02)
            prompts = [Prompt(p.box, float(p.score), "auto") for p in proposals]
            masks = analyzer.segmenter().segment(image.pixels, [p.box for p in prompts]) if prompts else []
            truth = [mask_box(lesion.mask) for lesion in case.lesions]
            record = {"name": case.name, "category": case.category, "findings": []}
            for prompt, mask, box in distinct_lesions(image, prompts, masks):
                rois = [extract_roi(image.pixels, box, m) for m in MARGINS] + \
                    [extract_roi(image.pixels, prompt.box, 0.15)]
                p = classifier.predict(np.stack(rois))
                record["findings"].append({
                    "score": prompt.score, "box": list(map(int, box)), "pbox": list(map(int, prompt.box)),
                    "iou": max((box_iou(box, t) for t in truth), default=0.0), "p": [float(x) for x in p],
                    "area": int(mask.sum())})
            record["p_truth"] = [float(x) for x in classifier.predict(
                np.stack([extract_roi(image.pixels, t, 0.15) for t in truth]))] if truth else []
            record["shape"] = list(image.pixels.shape)
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            print(i, len(chosen), case.name, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
