"""Helpers the MG probes share: the feature head refitted per fold, a nested CNN weight, breast-level scores, a
patient bootstrap of an AUC difference."""
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from branet_pacs.models.feature_head import CNN_WEIGHTS, FeatureHead, logit, nested_cnn_weight

WEIGHTS = np.array(CNN_WEIGHTS)   # CNN weights w in logit = w cnn + (1 - w) head (the product's grid)


def head_out_of_fold(x: np.ndarray, widths: Sequence[int], C: Sequence[float], y: np.ndarray,
                     fold: np.ndarray) -> np.ndarray:
    """Out-of-fold logit of a block head (`FeatureHead.fit` with `widths` / `C`) refitted without each fold."""
    z = np.zeros(len(y))
    for k in np.unique(fold):
        head = FeatureHead.fit(x[fold != k], y[fold != k], C, widths)
        z[fold == k] = logit(head.predict(x[fold == k]))
    return z


def nested_weight(cnn: np.ndarray, head: np.ndarray, y: np.ndarray, fold: np.ndarray) -> tuple[np.ndarray, list]:
    """Out-of-fold combined logit with w picked (max AUC) on the other folds; and the w picked per fold
    (`feature_head.nested_cnn_weight`, what `branet train --cnn-weight auto` does, on logits)."""
    combined, picked = nested_cnn_weight(1 / (1 + np.exp(-cnn)), 1 / (1 + np.exp(-head)), y, fold)
    return logit(combined), picked


def breast_level(files, groups, labels, p):
    """Max p over the ROIs of one patient's breast side (CC + MLO of one mass): (labels, p)."""
    by_breast = defaultdict(list)
    for f, g, y, q in zip(files, groups, labels, p):
        side = "LEFT" if "_LEFT_" in f else "RIGHT" if "_RIGHT_" in f else f
        by_breast[(g, side, y)].append(q)
    keys = list(by_breast)
    return np.array([k[2] for k in keys]), np.array([max(by_breast[k]) for k in keys])


def grouped_bootstrap(y, groups, a, b, n: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """AUC(a) - AUC(b) on the same ROIs: 2.5 %, observed, 97.5 % over patient resamples."""
    rng, patients = np.random.default_rng(seed), np.unique(groups)
    rows = {g: np.flatnonzero(groups == g) for g in patients}
    diffs = []
    for _ in range(n):
        idx = np.concatenate([rows[g] for g in rng.choice(patients, len(patients))])
        if len(set(y[idx])) == 2:
            diffs.append(roc_auc_score(y[idx], a[idx]) - roc_auc_score(y[idx], b[idx]))
    low, high = np.percentile(diffs, (2.5, 97.5))
    return float(low), roc_auc_score(y, a) - roc_auc_score(y, b), float(high)
