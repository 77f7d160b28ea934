"""Do hand-made lesion descriptors (`branet_pacs.imaging.lesion_descriptors`) carry mammography where the CNN and
LiteMedSAM's embedding do not? Patient-grouped 5-fold CV on CBIS-DDSM mass ROIs of: the descriptors alone (logistic
regression, gradient boosting), each descriptor group left out, LiteMedSAM's features alone, both in one regression,
and both as two blocks of the product's `FeatureHead` (each its own C, mean of the blocks' logits); and the
cross-site check (fit on all of CBIS-DDSM, score the mini-MIAS lesions: another digitiser and centre).

    python research/mg_cbis/texture_probe.py /work/rois/cbis-ddsm [--mias /work/rois/mias]

Descriptors are cached beside the ROIs (features-lesion-descriptors.npz; ~2 min for CBIS-DDSM's 1,304 ROIs).
"""
import argparse

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from branet_pacs.datasets.rois import load_roi_set
from branet_pacs.models.feature_head import FeatureHead
from branet_pacs.train.lesion_features import folder_descriptors, folder_features

GROUPS = {"intensity": slice(0, 9), "edges and spicules": slice(9, 15), "GLCM": slice(15, 25), "LBP": slice(25, 53)}


def logistic(C):
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000, class_weight="balanced"))


def boosting():
    return HistGradientBoostingClassifier(max_iter=300, learning_rate=0.04, max_leaf_nodes=15, l2_regularization=1.0,
                                          class_weight="balanced", random_state=0)


class TwoBlocks:
    """The product's head: LiteMedSAM block (C_s) + descriptor block (C_d), mean of the blocks' logits."""

    def __init__(self, c_s, c_d, width_d):
        self.c, self.blocks = (c_s, c_d), (512, width_d)

    def fit(self, x, y):
        self.head = FeatureHead.fit(x, y, self.c, self.blocks)
        return self

    def predict_proba(self, x):
        p = self.head.predict(x)
        return np.stack([1 - p, p], axis=1)


def out_of_fold(make, x, y, groups):
    p = np.zeros(len(y))
    for tr, va in StratifiedGroupKFold(5, shuffle=True, random_state=0).split(x, y, groups):
        p[va] = make().fit(x[tr], y[tr]).predict_proba(x[va])[:, 1]
    return p


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cbis")
    parser.add_argument("--mias")
    args = parser.parse_args()
    rois = load_roi_set(args.cbis)
    y, groups = rois.labels, np.array(rois.groups)
    xd, xs = folder_descriptors(args.cbis), folder_features(args.cbis)
    mias = (folder_descriptors(args.mias), folder_features(args.mias), load_roi_set(args.mias).labels) \
        if args.mias else None
    d = xd.shape[1]
    print(f"{len(y)} ROIs ({int(y.sum())} malignant), {len(set(groups))} patients, {d} descriptors; "
          "patient-grouped 5-fold CV")
    rows = [("descriptors, logistic C=0.1", lambda: logistic(0.1), "d"),
            ("descriptors, logistic C=0.01", lambda: logistic(0.01), "d"),
            ("descriptors, gradient boosting", boosting, "d"),
            ("LiteMedSAM, logistic C=0.01", lambda: logistic(0.01), "s"),
            ("both in one regression, C=0.01", lambda: logistic(0.01), "sd"),
            ("two blocks (product head), C=0.01/0.1", lambda: TwoBlocks(0.01, 0.1, d), "sd"),
            ("two blocks (product head), C=0.003/0.1", lambda: TwoBlocks(0.003, 0.1, d), "sd"),
            ("two blocks (product head), C=0.01/0.03", lambda: TwoBlocks(0.01, 0.03, d), "sd")]
    pick = {"d": lambda a, b: a, "s": lambda a, b: b, "sd": lambda a, b: np.hstack([b, a])}
    for name, make, kind in rows:
        x = pick[kind](xd, xs)
        p = out_of_fold(make, x, y, groups)
        line = f"{name:42s} AUC {roc_auc_score(y, p):.3f}  bal.acc {balanced_accuracy_score(y, p > 0.5):.3f}"
        if mias is not None:
            q = make().fit(x, y).predict_proba(pick[kind](mias[0], mias[1]))[:, 1]
            line += f"   CBIS -> mini-MIAS AUC {roc_auc_score(mias[2], q):.3f}"
        print(line, flush=True)
    for name, part in GROUPS.items():
        keep = np.ones(d, bool)
        keep[part] = False
        alone = roc_auc_score(y, out_of_fold(lambda: logistic(0.1), xd[:, part], y, groups))
        without = roc_auc_score(y, out_of_fold(lambda: logistic(0.1), xd[:, keep], y, groups))
        print(f"descriptor group {name:20s} alone AUC {alone:.3f}, all but it {without:.3f}")


if __name__ == "__main__":
    main()
