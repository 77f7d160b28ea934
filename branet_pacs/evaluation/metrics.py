"""Metrics: binary classification (malignant = positive class), fold summaries, threshold choice, mask overlap."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from sklearn import metrics as skm

METRIC_NAMES = ("accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity", "precision", "f1",
                "cohen_kappa")


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def confusion(y_true: Sequence[int], y_pred: Sequence[int]) -> tuple[int, int, int, int]:
    """(tn, fp, fn, tp) with malignant (1) positive."""
    tn, fp, fn, tp = skm.confusion_matrix(np.asarray(y_true), np.asarray(y_pred), labels=[0, 1]).ravel()
    return int(tn), int(fp), int(fn), int(tp)


def binary_metrics(y_true: Sequence[int], p_malignant: Sequence[float], threshold: float) -> dict:
    """Metrics of `p >= threshold` against truth. ROC AUC is threshold-free; NaN when only one class is present.

    confusion_matrix is [[TN, FP], [FN, TP]] (rows = truth benign/malignant, columns = predicted).
    """
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(p_malignant, dtype=float)
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = confusion(y, pred)
    sensitivity, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    precision = _ratio(tp, tp + fp)
    both = len(set(y.tolist())) == 2
    return {
        "n": int(y.size),
        "n_malignant": int(y.sum()),
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, y.size),
        "balanced_accuracy": (sensitivity + specificity) / 2 if both else float("nan"),
        "roc_auc": float(skm.roc_auc_score(y, p)) if both else float("nan"),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "precision": precision,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "cohen_kappa": cohen_kappa(y, pred),
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }


def cohen_kappa(a: Sequence[int], b: Sequence[int]) -> float:
    """Cohen's κ between two label vectors; 1.0 when both are constant and equal, NaN when undefined."""
    a, b = np.asarray(a), np.asarray(b)
    po = float(np.mean(a == b))
    labels = np.union1d(a, b)
    pe = float(sum(np.mean(a == k) * np.mean(b == k) for k in labels))
    if math.isclose(pe, 1.0):
        return 1.0 if math.isclose(po, 1.0) else float("nan")
    return (po - pe) / (1.0 - pe)


def summarise(folds: Iterable[dict], names: Sequence[str] = METRIC_NAMES) -> dict:
    """{metric: {"mean", "sd", "values"}} over folds (sd with ddof=1; NaN values are left out)."""
    folds = list(folds)
    out = {}
    for name in names:
        values = [float(f[name]) for f in folds]
        finite = [v for v in values if not math.isnan(v)]
        out[name] = {"mean": float(np.mean(finite)) if finite else float("nan"),
                     "sd": float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0,
                     "values": values}
    return out


def youden_threshold(y_true: Sequence[int], p_malignant: Sequence[float]) -> float:
    """Threshold maximising sensitivity + specificity - 1 (= the balanced-accuracy optimum).

    The cut is placed midway between the chosen score and the next lower distinct score, so the rule `p >= t`
    reproduces the optimum on these data without sitting on a training point. Ties in J go to the cut
    nearest 0.5 (the least surprising one).
    """
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(p_malignant, dtype=float)
    if len(set(y.tolist())) < 2:
        return 0.5
    scores = np.unique(p)[::-1]                      # distinct scores, high to low
    cuts = np.concatenate([(scores[:-1] + scores[1:]) / 2, [scores[-1] / 2]]) if scores.size > 1 else scores / 2
    pos, neg = y == 1, y == 0
    best, best_j = 0.5, -math.inf
    for cut in cuts:
        pred = p >= cut
        j = pred[pos].mean() + (~pred[neg]).mean() - 1
        if j > best_j + 1e-12 or (abs(j - best_j) <= 1e-12 and abs(cut - 0.5) < abs(best - 0.5)):
            best, best_j = float(cut), j
    return best


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two boolean masks (1.0/1.0 when both are empty)."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    inter = float(np.logical_and(pred, truth).sum())
    total = float(pred.sum() + truth.sum())
    union = total - inter
    if total == 0:
        return 1.0, 1.0
    return 2 * inter / total, inter / union


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return dice_iou(pred, truth)[0]


def json_safe(value, digits: int | None = None):
    """NaN/inf -> None, numpy scalars -> Python, keys -> str, recursively (strict JSON); floats rounded to
    `digits` when given."""
    if isinstance(value, dict):
        return {str(k): json_safe(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, digits) for v in value]
    if isinstance(value, (np.floating, float)):
        if not math.isfinite(float(value)):
            return None
        return float(value) if digits is None else round(float(value), digits)
    if isinstance(value, np.integer):
        return int(value)
    return value
