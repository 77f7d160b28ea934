"""Re-score the `explore.py` records' top finding (and the true boxes) with other classifiers' fold models trained on
the same folds (`branet train --split-seed 0 --seed N`), and their mean. No detector or segmenter runs.

    python research/pipeline_eval/rescore.py MODEL_DIR [MODEL_DIR ...]
"""
import glob
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from branet_pacs.evaluation.images import roi_key
from branet_pacs.imaging.roi import extract_roi
from branet_pacs.models.classifier import MalignancyClassifier, load_classifier_networks
from branet_pacs.models.manifest import find_model
from branet_pacs.models.runtime import configure_torch

from common import US_RECORDS, cases, read_records


def fold_models(model_dir: str, entry) -> dict[str, MalignancyClassifier]:
    out = {}
    for done in sorted(glob.glob(f"{model_dir}/checkpoints/fold*/done.json")):
        classifier = MalignancyClassifier(entry, load_classifier_networks(Path(done).parent / "best.safetensors"),
                                          torch.device("cpu"))
        for f in json.load(open(done))["val_files"]:
            out[roi_key(f)] = classifier
    return out


def main(argv: list[str]) -> None:
    configure_torch(1)
    records = read_records(US_RECORDS)
    entry = find_model(Path("models"), "classifier", "US")
    models = {d: fold_models(d, entry) for d in argv}
    y, auto, truth = [], {d: [] for d in models}, {d: [] for d in models}
    for case in cases("busi"):
        if case.category == "normal" or case.name not in records:
            continue
        record = records[case.name]
        y.append(case.category == "malignant")
        image = case.pixels()
        boxes = [lesion.box for lesion in case.lesions]
        for d, by_image in models.items():
            classifier = by_image[roi_key(case.name)]
            auto[d].append(float(classifier.predict_boxes(image, [tuple(record["findings"][0]["box"])], 0.15)[0])
                           if record["findings"] else 0.0)
            truth[d].append(float(classifier.predict(np.stack([extract_roi(image, b, 0.15) for b in boxes])).max()))
    y = np.array(y)
    for d in models:
        print(d, "auto", round(roc_auc_score(y, auto[d]), 4), "truth", round(roc_auc_score(y, truth[d]), 4))
    print("ensemble auto", round(roc_auc_score(y, np.mean([auto[d] for d in models], 0)), 4),
          "truth", round(roc_auc_score(y, np.mean([truth[d] for d in models], 0)), 4))


if __name__ == "__main__":
    main(sys.argv[1:])
