"""Does the LiteMedSAM-feature head add to the ResNet18 across sites?  For each screen run (`screen.py` checkpoints
OUT/<train-site>-<seed>/last.pt), the CNN's flip-TTA p(malignant) on the other site's ROIs, the feature head
(`sam_head_loso.py`, fitted on the training site only) on the same ROIs, and their mean in logit space.
Also the AUC on the other site's ROIs split by a manifest tag (e.g. calipers=true/false).

    python research/us_sites/ensemble.py var/exp/screen-base [--C 0.003] [--tag calipers]
"""
import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from branet_pacs.datasets.rois import load_roi_set
from branet_pacs.models.classifier import build_resnet18
from branet_pacs.models.runtime import configure_torch
from branet_pacs.train.classifier import predict

sys.path.insert(0, str(Path(__file__).parent))
from sam_head_loso import head  # noqa: E402

SITES = {"busi": "/work/rois/busi", "bus-uclm": "/work/rois/bus-uclm"}
FEATURES = "var/exp/samfeat-{site}.npz"


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def tags_of(site: str) -> dict[str, dict[str, str]]:
    with open(Path(SITES[site]) / "manifest.csv") as handle:
        return {row["roi_file"].removesuffix(".png"): dict(t.split("=") for t in row["tags"].split(";") if t)
                for row in csv.DictReader(handle)}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("screen_dir", type=Path)
    parser.add_argument("--C", type=float, default=0.003)
    parser.add_argument("--tag", default="calipers")
    args = parser.parse_args(argv)
    configure_torch(1)
    rois = {site: load_roi_set(path) for site, path in SITES.items()}
    features = {site: np.load(FEATURES.format(site=site)) for site in SITES}
    for run in sorted(args.screen_dir.glob("*-[0-9]")):
        train = run.name.rsplit("-", 1)[0]
        test = next(s for s in SITES if s != train)
        model = build_resnet18(0.5)
        model.load_state_dict(torch.load(run / "last.pt", map_location="cpu", weights_only=True)["model"])
        model.eval()
        data = rois[test]
        cnn = predict(model, torch.from_numpy(data.pixels), torch.device("cpu"), tta=True)
        names = [f.removesuffix(".png") for f in data.files]
        order = {n: i for i, n in enumerate(features[test]["names"])}
        feats = features[test]["features"][[order[n] for n in names]]
        sam = head(args.C).fit(features[train]["features"], features[train]["labels"]).predict_proba(feats)[:, 1]
        both = 1 / (1 + np.exp(-(logit(cnn) + logit(sam)) / 2))
        y = data.labels
        line = [f"{run.name:12} -> {test:9}"]
        for label, p in (("cnn", cnn), ("sam-head", sam), ("mean", both)):
            line.append(f"{label} {roc_auc_score(y, p):.4f}")
        tags = tags_of(test)
        for value in ("true", "false"):
            chosen = np.array([tags.get(n, {}).get(args.tag) == value for n in names])
            if chosen.sum() and 0 < y[chosen].sum() < chosen.sum():
                line.append(f"cnn[{args.tag}={value}, n={chosen.sum()}] {roc_auc_score(y[chosen], cnn[chosen]):.4f}")
        print("  ".join(line), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
