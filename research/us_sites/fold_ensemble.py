"""Would a fold ensemble hold better at the left-out site than the one final model?  For each `branet train
--validate-by site` run (OUT/without-<site>/), score the left-out site's ROIs with every fold's best weights
(checkpoints/fold*/best.safetensors, flip TTA at the manifest margin) and with the final model, alone and combined
with the run's LiteMedSAM feature head (its logit recovered from predictions-<site>.csv, where p_malignant is the
mean of the CNN's and the head's logits).

    python research/us_sites/fold_ensemble.py var/train/us-sites-loso --rois busi=/work/rois/busi \
        --rois bus-uclm=/work/rois/bus-uclm
"""
import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from branet_pacs.datasets.rois import load_roi_set
from branet_pacs.models.classifier import build_resnet18
from branet_pacs.models.feature_head import combine
from branet_pacs.models.runtime import configure_torch
from branet_pacs.train.classifier import predict


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def score(weights: Path, pixels: torch.Tensor) -> np.ndarray:
    model = build_resnet18(0.5)
    model.load_state_dict(load_file(str(weights)))
    return predict(model, pixels, torch.device("cpu"), tta=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("loso_dir", type=Path)
    parser.add_argument("--rois", action="append", required=True, help="SITE=ROI_DIR")
    parser.add_argument("--top", type=int, default=3, help="also: the TOP folds by their validation AUC")
    args = parser.parse_args(argv)
    configure_torch(1)
    sites = dict(item.split("=", 1) for item in args.rois)
    for run in sorted(args.loso_dir.glob("without-*")):
        site = run.name.removeprefix("without-")
        data = load_roi_set(sites[site])
        pixels = torch.from_numpy(data.pixels)
        y = data.labels
        with open(run / f"predictions-{site}.csv") as handle:
            shipped = {Path(r["file"]).name: r for r in csv.DictReader(handle)}
        rows = [shipped[Path(f).name] for f in data.files]
        # the head's own p(malignant): p_malignant = combine(p_cnn, p_head), i.e. the mean of the two logits
        p_head = sigmoid(np.array([2 * logit(np.array(float(r["p_malignant"]))) - logit(np.array(float(r["p_cnn"])))
                                   for r in rows]))
        final = score(run / "weights.safetensors", pixels)
        fold_dirs = sorted(w.parent for w in run.glob("checkpoints/fold*/best.safetensors"))
        folds = [score(d / "best.safetensors", pixels) for d in fold_dirs]
        ensemble = np.mean(folds, axis=0)          # as the shipped ensemble does: softmax probabilities averaged
        # the k folds with the best validation AUC on their own (training-site) fold: no left-out-site information
        val_auc = [json.loads((d / "done.json").read_text())["best_val_auc"] for d in fold_dirs]
        top = np.argsort(val_auc)[::-1][:args.top]
        top_ensemble = np.mean([folds[i] for i in top], axis=0)
        print(f"{run.name} -> {site} (n={len(y)}, malignant {int(y.sum())})")
        print(f"  final model (ROI margin only)     AUC {roc_auc_score(y, final):.4f}"
              f"   [train's multi-margin p_cnn: {roc_auc_score(y, [float(r['p_cnn']) for r in rows]):.4f}]")
        for k, p in enumerate(folds, 1):
            print(f"  fold {k} best                      AUC {roc_auc_score(y, p):.4f}")
        print(f"  {len(folds)}-fold ensemble                   AUC {roc_auc_score(y, ensemble):.4f}")
        print(f"  top {args.top} folds by validation AUC {sorted(int(i) + 1 for i in top)}  AUC "
              f"{roc_auc_score(y, top_ensemble):.4f}")
        for name, cnn in (("final", final), ("fold ensemble", ensemble), (f"top-{args.top}", top_ensemble)):
            both = combine(cnn, p_head)
            print(f"  {name:13} + feature head       AUC {roc_auc_score(y, both):.4f}"
                  f"  balanced accuracy at 0.5 {balanced_accuracy_score(y, both >= 0.5):.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
