"""Can the LiteMedSAM feature head carry mammography? Its 512 lesion features (the embedding pooled in and around
the mask LiteMedSAM draws from the true box, as the pipeline computes them) for every CBIS-DDSM mass ROI, then a
logistic regression: patient-grouped 5-fold CV on CBIS-DDSM for a few regularisation strengths, and the cross-site
check (fit on all of CBIS-DDSM, score the mini-MIAS lesions: another digitiser and centre). Per-view and breast-level
(max over the CC and MLO ROIs of one breast's mass) AUCs for CBIS-DDSM.

    python research/mg_cbis/feature_head_probe.py /work/rois/cbis-ddsm [--mias /work/rois/mias]

Features are cached in each folder (features-litemedsam.npz); the first run encodes every film (~1-1.5 s each).
"""
import argparse

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from branet_pacs.datasets.rois import load_roi_set
from branet_pacs.models.runtime import configure_torch
from branet_pacs.train.lesion_features import folder_features
from common import breast_level


def head(C: float):
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000, class_weight="balanced"))


def shipped_cnn(pixels: np.ndarray) -> np.ndarray:
    """p(malignant) of the shipped MG classifier (mg-resnet18 1.0.0: mini-MIAS only) on uint8 ROIs: the baseline."""
    from branet_pacs.models.classifier import MalignancyClassifier

    classifier = MalignancyClassifier.load("models", "MG", device="cpu")
    return classifier.predict(pixels.astype(np.float32) / 127.5 - 1.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cbis")
    parser.add_argument("--mias")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    configure_torch(args.threads)
    rois = load_roi_set(args.cbis)
    x, y, groups = folder_features(args.cbis), rois.labels, np.array(rois.groups)
    mias = None
    if args.mias:
        mias = (folder_features(args.mias), load_roi_set(args.mias).labels)
    print(f"CBIS-DDSM: {len(y)} ROIs ({int(y.sum())} malignant), {len(set(groups))} patients")
    p0 = shipped_cnn(rois.pixels)
    yb, pb = breast_level(rois.files, groups, y, p0)
    print(f"shipped mg-resnet18 (1.0.0, mini-MIAS) on CBIS-DDSM ROIs: AUC {roc_auc_score(y, p0):.3f}, "
          f"breast-level AUC {roc_auc_score(yb, pb):.3f}")
    for C in (0.001, 0.003, 0.01, 0.03, 0.1):
        p = np.zeros(len(y))
        for tr, va in StratifiedGroupKFold(5, shuffle=True, random_state=0).split(x, y, groups):
            p[va] = head(C).fit(x[tr], y[tr]).predict_proba(x[va])[:, 1]
        yb, pb = breast_level(rois.files, groups, y, p)
        line = (f"C={C}: grouped CV ROI AUC {roc_auc_score(y, p):.3f}, bal. acc {balanced_accuracy_score(y, p > 0.5):.3f}"
                f"; breast-level (max of views, {len(yb)} breasts) AUC {roc_auc_score(yb, pb):.3f}")
        if mias is not None:
            q = head(C).fit(x, y).predict_proba(mias[0])[:, 1]
            line += (f"; CBIS -> mini-MIAS ({len(mias[1])} lesions) AUC {roc_auc_score(mias[1], q):.3f}, "
                     f"bal. acc {balanced_accuracy_score(mias[1], q > 0.5):.3f}")
        print(line, flush=True)


if __name__ == "__main__":
    main()
