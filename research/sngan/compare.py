"""Paired comparison of two `branet evaluate` runs on the same test ROIs (real-only vs real+synthetic).

    python research/sngan/compare.py EVAL_A/predictions.csv EVAL_B/predictions.csv

Prints both models' metrics at their own thresholds, the paired bootstrap (2000 resamples of test ROIs, seed 0)
95 % interval of the AUC and balanced-accuracy differences B - A, and McNemar's exact test on the discordant pairs.
"""
import csv
import sys

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score


def read(path):
    with open(path) as handle:
        rows = sorted(csv.DictReader(handle), key=lambda r: r["file"])
    return ([r["file"] for r in rows], np.array([r["truth"] == "malignant" for r in rows], dtype=int),
            np.array([float(r["p_malignant"]) for r in rows]),
            np.array([r["predicted"] == "malignant" for r in rows], dtype=int))


def main(argv: list[str]) -> None:
    fa, ya, pa, ka = read(argv[0])
    fb, yb, pb, kb = read(argv[1])
    assert fa == fb and (ya == yb).all(), "the two evaluations must cover the same ROIs"
    y = ya
    for name, p, k in (("A", pa, ka), ("B", pb, kb)):
        print(f"{name}: AUC {roc_auc_score(y, p):.4f}  balanced accuracy {balanced_accuracy_score(y, k):.4f}  "
              f"accuracy {(k == y).mean():.4f}  sensitivity {k[y == 1].mean():.4f}  specificity {1 - k[y == 0].mean():.4f}")
    rng = np.random.default_rng(0)
    d_auc, d_bal = [], []
    for _ in range(2000):
        i = rng.integers(0, len(y), len(y))
        if y[i].min() == y[i].max():
            continue
        d_auc.append(roc_auc_score(y[i], pb[i]) - roc_auc_score(y[i], pa[i]))
        d_bal.append(balanced_accuracy_score(y[i], kb[i]) - balanced_accuracy_score(y[i], ka[i]))
    for name, d in (("AUC", d_auc), ("balanced accuracy", d_bal)):
        lo, hi = np.percentile(d, [2.5, 97.5])
        print(f"B - A {name}: {np.mean(d):+.4f} (paired bootstrap 95% CI {lo:+.4f} .. {hi:+.4f})")
    a_right, b_right = ka == y, kb == y
    only_a, only_b = int((a_right & ~b_right).sum()), int((~a_right & b_right).sum())
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    print(f"McNemar exact: A right/B wrong {only_a}, A wrong/B right {only_b}, p = {p:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
