"""Linear probe of frozen ResNet18 backbones on the MG ROIs: how much benign/malignant signal each start carries
before any fine-tuning (a quick check of `branet pretrain` runs, minutes instead of a 30-minute `branet train`).

Each start (`random`, a classifier's weights, a pretrain backbone, or a pretrain checkpoint.pt at an earlier step) is
loaded through `train.classifier.initial_state` (what `--init` does), its 512 pooled features of every ROI (and the
left-right flip, averaged) are standardised and fed to a logistic regression. Out of fold on the shipped model's
patient-grouped folds (models/mg-resnet18/oof_predictions.csv), then trained on all CBIS-DDSM ROIs and scored on
the mini-MIAS ROIs (another site).

    python research/mg_cbis/ssl_probe.py /work/rois/cbis-ddsm --mias /work/rois/mias \
        random models/us-resnet18/weights.safetensors var/exp/ssl/mg-simclr/backbone.safetensors
"""
import argparse
import csv
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from branet_pacs.datasets.rois import load_roi_set
from branet_pacs.models.classifier import build_resnet18
from branet_pacs.train.classifier import initial_state

FOLDS_FROM = Path("models/mg-resnet18/oof_predictions.csv")


def backbone(start: str) -> torch.nn.Module:
    """The network without its head, from `random`, a safetensors file, or a pretrain checkpoint.pt."""
    torch.manual_seed(0)
    net = build_resnet18()
    if start.endswith(".pt"):
        state = torch.load(start, map_location="cpu", weights_only=True)["model"]
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "b.safetensors"
            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
            net.load_state_dict(initial_state(path, 0.5))
    elif start != "random":
        net.load_state_dict(initial_state(start, 0.5))
    net.fc = torch.nn.Identity()
    return net.eval()


@torch.inference_mode()
def features(net: torch.nn.Module, pixels: np.ndarray) -> np.ndarray:
    out = []
    for i in range(0, len(pixels), 128):
        x = (torch.from_numpy(pixels[i:i + 128]).float() / 127.5 - 1.0)[:, None]
        out.append(((net(x) + net(torch.flip(x, dims=(-1,)))) / 2).numpy())
    return np.concatenate(out)


def probe(c: float):
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rois", type=Path)
    parser.add_argument("starts", nargs="+")
    parser.add_argument("--mias", type=Path, default=None)
    parser.add_argument("--c", type=float, nargs="+", default=[0.001, 0.01])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_roi_set(args.rois)
    with open(FOLDS_FROM, newline="") as handle:
        fold_of = {row["file"]: int(row["fold"]) for row in csv.DictReader(handle)}
    fold = np.array([fold_of[f] for f in data.files])
    mias = load_roi_set(args.mias) if args.mias else None
    print(f"{'start':60} {'C':>6} {'CBIS oof AUC':>12} {'folds':>32} {'mini-MIAS':>9}")
    for start in args.starts:
        net = backbone(start)
        x = features(net, data.pixels)
        x_mias = features(net, mias.pixels) if mias else None
        for c in args.c:
            p = np.zeros(len(x))
            for k in np.unique(fold):
                model = probe(c).fit(x[fold != k], data.labels[fold != k])
                p[fold == k] = model.predict_proba(x[fold == k])[:, 1]
            per_fold = [roc_auc_score(data.labels[fold == k], p[fold == k]) for k in np.unique(fold)]
            other = ""
            if mias is not None:
                other = f"{roc_auc_score(mias.labels, probe(c).fit(x, data.labels).predict_proba(x_mias)[:, 1]):9.3f}"
            print(f"{start[-60:]:60} {c:6g} {roc_auc_score(data.labels, p):12.3f} "
                  f"{' '.join(f'{a:.3f}' for a in per_fold):>32} {other}", flush=True)


if __name__ == "__main__":
    main()
