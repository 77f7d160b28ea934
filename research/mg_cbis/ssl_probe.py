"""Linear probe of frozen ResNet18 backbones on the MG ROIs: how much benign/malignant signal each start carries
before any fine-tuning (a quick check of `branet pretrain` runs, minutes instead of a 30-minute `branet train`).

Each start (`random`, a classifier's weights, a pretrain backbone, or a pretrain checkpoint.pt at an earlier step) is
loaded through `train.classifier.initial_state` (what `--init` does), its 512 pooled features of every ROI (and the
left-right flip, averaged) are standardised and fed to a logistic regression. Out of fold on the shipped model's
patient-grouped folds (models/mg-resnet18/oof_predictions.csv), then trained on all CBIS-DDSM ROIs and scored on
the mini-MIAS ROIs (another site).

    python research/mg_cbis/ssl_probe.py /work/rois/cbis-ddsm --mias /work/rois/mias \
        random models/us-resnet18/weights.safetensors var/exp/ssl/mg-simclr/backbone.safetensors

`--with-head`: each start's features also as a fifth block beside the shipped head's four (its recipe and C from
models/mg-resnet18/metrics.json; head blocks refitted per fold), against the shipped head alone, with a patient
bootstrap of the difference, and at mini-MIAS (heads fitted on all CBIS-DDSM ROIs).
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
from branet_pacs.models.feature_head import FeatureHead, logit
from branet_pacs.train.classifier import initial_state
from common import grouped_bootstrap
from crop_embedding_probe import SHIPPED, head_oof, line, shipped_head_recipe
from crop_views_probe import shipped_blocks

FOLDS_FROM = SHIPPED / "oof_predictions.csv"


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
    parser.add_argument("--with-head", action="store_true", help="also as a fifth block beside the shipped head")
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
        if args.with_head:
            beside_head(args, data, fold, x, mias, x_mias)


def beside_head(args, data, fold: np.ndarray, x: np.ndarray, mias, x_mias: np.ndarray | None) -> None:
    """The start's features as a fifth block of the shipped head (C from --c), out of fold and at mini-MIAS."""
    y, groups = data.labels, np.array(data.groups)
    inputs, base_c = shipped_head_recipe()
    blocks = shipped_blocks(args.rois, inputs)
    shipped = head_oof(blocks, base_c, y, fold)
    print(line("  shipped head", y, shipped, fold))
    m_blocks = shipped_blocks(args.mias, inputs) if mias is not None else None
    if m_blocks is not None:     # the shipped head fitted on all CBIS-DDSM ROIs, scored at mini-MIAS: once
        base = FeatureHead.fit(np.concatenate(blocks, axis=1), y, base_c, [b.shape[1] for b in blocks])
        print(line("  mini-MIAS: shipped head", mias.labels, logit(base.predict(np.concatenate(m_blocks, axis=1)))))
    for c in args.c:
        z = head_oof(blocks + [x], base_c + [c], y, fold)
        low, mid, high = grouped_bootstrap(y, groups, z, shipped)
        print(line(f"  head + this block (C {c})", y, z, fold,
                   f"  vs head {mid:+.3f} (95 % CI {low:+.3f} to {high:+.3f})"))
        if m_blocks is not None:
            head = FeatureHead.fit(np.concatenate(blocks + [x], axis=1), y, base_c + [c],
                                   [b.shape[1] for b in blocks + [x]])
            print(line("    mini-MIAS: head + this block", mias.labels,
                       logit(head.predict(np.concatenate(m_blocks + [x_mias], axis=1)))))

if __name__ == "__main__":
    main()
