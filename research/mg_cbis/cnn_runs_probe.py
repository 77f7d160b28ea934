"""Compare `branet train` runs that differ only in the CNN (augmentation, ROI size...) on the shipped MG head.

For each run folder: the CNN's out-of-fold p(malignant) (checkpoints/fold*/done.json), the fold heads saved beside them
scored on the ROI folder's cached head features, and out of fold: the CNN alone, the head alone, the plain logit mean
and the nested CNN weight (`feature_head.nested_cnn_weight`, what `branet train --cnn-weight auto` reports). Works on
a run whose final model was never trained (the folds are enough). Each run's ROI folder must hold the same ROI files.

    python research/mg_cbis/cnn_runs_probe.py /work/rois/cbis-ddsm var/exp/mg21/mg-resnet18 var/exp/mg-int/mg-resnet18
"""
import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from branet_pacs.datasets.rois import list_roi_files
from branet_pacs.evaluation import metrics as M
from branet_pacs.models.feature_head import FeatureHead, combine, nested_cnn_weight
from branet_pacs.train.lesion_features import head_features

INPUTS = ("litemedsam", "litemedsam-crop", "litemedsam-crop-stages", "lesion-descriptors")


def fold_predictions(run: Path, files: list[str], features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(CNN p, head p, fold) per ROI, out of fold."""
    index = {f: i for i, f in enumerate(files)}
    cnn, head, fold = np.full(len(files), np.nan), np.full(len(files), np.nan), np.zeros(len(files), dtype=int)
    for done in sorted(run.glob("checkpoints/fold*/done.json")):
        record = json.loads(done.read_text())
        rows = np.array([index[f] for f in record["val_files"]])
        cnn[rows], fold[rows] = record["p_val"], int(done.parent.name.removeprefix("fold"))
        head[rows] = FeatureHead.load(done.parent / "feature_head.safetensors").predict(features[rows])
    if np.isnan(cnn).any() or np.isnan(head).any():
        raise SystemExit(f"{run}: not every ROI has an out-of-fold CNN and head prediction (unfinished folds?)")
    return cnn, head, fold


def line(name: str, y: np.ndarray, p: np.ndarray, extra: str = "") -> str:
    bal = M.binary_metrics(y, p, M.youden_threshold(y, p))["balanced_accuracy"]
    return f"  {name:22} AUC {roc_auc_score(y, p):.4f}  bal.acc {bal:.4f}{extra}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the ROI folder whose head-feature caches the runs' heads read")
    parser.add_argument("runs", type=Path, nargs="+", help="branet train output folders (with checkpoints/)")
    args = parser.parse_args()
    files, y = zip(*list_roi_files(args.data))
    y = np.array(y)
    features = head_features(args.data, INPUTS, "cpu")
    for run in args.runs:
        cnn, head, fold = fold_predictions(run, list(files), features)
        nested, picked = nested_cnn_weight(cnn, head, y, fold)
        per_fold = ", ".join(f"{roc_auc_score(y[fold == k], nested[fold == k]):.3f}" for k in np.unique(fold))
        print(run)
        print(line("CNN alone", y, cnn))
        print(line("head alone", y, head))
        print(line("logit mean", y, combine(cnn, head)))
        print(line("nested CNN weight", y, nested, f"  weights {picked}; per fold {per_fold}"))


if __name__ == "__main__":
    main()
