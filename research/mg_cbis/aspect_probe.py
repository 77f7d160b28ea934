"""Does restoring the films' aspect change what a classifier can learn?  A cheap probe, not the product model:
patient-grouped 5-fold CV of a logistic regression on 32x32 down-sampled ROIs (pixels + a gradient-orientation
histogram), once on ROIs cut from the squashed copies (`prepare cbis-ddsm --aspect 1`) and once on restored ones.

    python research/mg_cbis/aspect_probe.py /work/rois/cbis-ddsm-squashed /work/rois/cbis-ddsm
"""
import sys

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from branet_pacs.datasets.rois import load_roi_set


def features(pixels: np.ndarray) -> np.ndarray:
    small = np.stack([np.asarray(Image.fromarray(p).resize((32, 32), Image.BILINEAR), np.float32) / 255 for p in pixels])
    gy, gx = np.gradient(small, axis=(1, 2))
    angle = np.arctan2(gy, gx)
    magnitude = np.hypot(gx, gy)
    bins = np.stack([np.histogram(a, bins=12, range=(-np.pi, np.pi), weights=m)[0] for a, m in zip(angle, magnitude)])
    return np.concatenate([small.reshape(len(small), -1), bins / (bins.sum(1, keepdims=True) + 1e-6)], axis=1)


def main(paths: list[str]) -> None:
    for path in paths:
        data = load_roi_set(path)
        x, y, groups = features(data.pixels), data.labels, data.groups
        p = np.zeros(len(y))
        for train, test in StratifiedGroupKFold(5, shuffle=True, random_state=0).split(x, y, groups):
            model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000, class_weight="balanced"))
            p[test] = model.fit(x[train], y[train]).predict_proba(x[test])[:, 1]
        print(f"{path}: {len(y)} ROIs, {len(set(groups))} patients, grouped 5-fold out-of-fold AUC {roc_auc_score(y, p):.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
