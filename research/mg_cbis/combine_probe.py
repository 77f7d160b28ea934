"""How much should the CNN weigh beside the feature head?  The product combines the CNN's and the head's
p(malignant) as the plain mean of their logits (`feature_head.combine`). This probe takes a CNN-only `branet train`
run (its folds' out-of-fold predictions in checkpoints/fold*/done.json), refits the shipped two-block head on the
same folds, and scores: each part alone, the product's mean, every fixed CNN weight w in logit = w*cnn + (1-w)*head,
and a learned w (chosen on the other folds' out-of-fold predictions, applied to the fold left out: nested, so the
figure is out of fold too). Several runs (e.g. two ROI margins) can be given; their CNNs are then also averaged.

    python research/mg_cbis/combine_probe.py /work/rois/cbis-ddsm var/train/mg-cbis-usinit [var/train/mg-cbis-m50]
"""
import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from branet_pacs.datasets.rois import list_roi_files
from branet_pacs.models.feature_head import input_widths, logit
from branet_pacs.train.lesion_features import head_features
from common import WEIGHTS, head_out_of_fold, nested_weight

INPUTS = ("litemedsam", "lesion-descriptors")
C = (0.003, 0.1)


def cnn_out_of_fold(run: Path, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(logit of p(malignant), fold number) per ROI file, from the run's folds."""
    index = {f: i for i, f in enumerate(files)}
    p, fold = np.full(len(files), np.nan), np.zeros(len(files), dtype=int)
    for done in sorted(run.glob("checkpoints/fold*/done.json")):
        record = json.loads(done.read_text())
        k = int(done.parent.name.removeprefix("fold"))
        for file, value in zip(record["val_files"], record["p_val"]):
            p[index[file]], fold[index[file]] = value, k
    if np.isnan(p).any():
        raise SystemExit(f"{run}: {int(np.isnan(p).sum())} ROIs have no out-of-fold prediction")
    return logit(p), fold


def report(name: str, z: np.ndarray, y: np.ndarray) -> None:
    threshold = np.median(z)     # balanced accuracy at the pooled median (both classes are near half)
    print(f"  {name:44s} AUC {roc_auc_score(y, z):.3f}   bal.acc {balanced_accuracy_score(y, z > threshold):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("rois", type=Path, help="the ROI folder the runs trained on (feature caches beside it)")
    parser.add_argument("runs", type=Path, nargs="+", help="CNN-only branet train OUT folders, same folds")
    args = parser.parse_args()
    files = [f for f, _ in list_roi_files(args.rois)]
    y = np.array([int(f.startswith("malignant/")) for f in files])
    x = head_features(args.rois, INPUTS)
    cnns, folds = zip(*(cnn_out_of_fold(run, files) for run in args.runs))
    if any((f != folds[0]).any() for f in folds):
        raise SystemExit("the runs do not share their folds (use the same --split-seed)")
    fold = folds[0]
    head = head_out_of_fold(x, input_widths(INPUTS), C, y, fold)
    print(f"{len(y)} ROIs, {y.sum()} malignant, folds {np.bincount(fold)[1:].tolist()}")
    report("head alone (two blocks)", head, y)
    candidates = {run.name: cnn for run, cnn in zip(args.runs, cnns)}
    if len(cnns) > 1:
        candidates["mean of the runs' CNNs"] = np.mean(cnns, axis=0)
    for name, cnn in candidates.items():
        print(f"CNN {name}")
        report("CNN alone", cnn, y)
        report("product: mean of CNN and head logits", (cnn + head) / 2, y)
        for w in WEIGHTS:
            print(f"    w {w:.1f}: AUC {roc_auc_score(y, w * cnn + (1 - w) * head):.3f}")
        nested, picked = nested_weight(cnn, head, y, fold)
        report(f"learned w (nested; picked {picked})", nested, y)


if __name__ == "__main__":
    main()
