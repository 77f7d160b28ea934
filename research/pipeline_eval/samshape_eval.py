"""Out-of-fold AUC of the shape descriptors from truth masks vs LiteMedSAM masks (true-box and automatic prompts),
alone and stacked with the CNN, on the classifier's folds.

    python research/pipeline_eval/samshape_eval.py [DROPPED_FEATURE_INDICES]
"""
import glob
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from branet_pacs.evaluation.images import roi_key

from common import US_FOLDS, US_RECORDS, fold_of_images, read_records


def logit(p):
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def main(argv: list[str]) -> None:
    recs = read_records(glob.glob("var/exp/samshape-*.jsonl"))
    cnn = read_records(US_RECORDS)
    fold_of = fold_of_images(US_FOLDS)
    names = [n for n in recs if roi_key(n) in fold_of and n in cnn]
    print("images", len(names))
    drop = [int(a) for a in argv[0].split(",")] if argv and argv[0] else []

    def sel(values):
        return [v for i, v in enumerate(values) if i not in drop]

    def rows(n, src, space, with_cnn):
        out = []
        for i, t in enumerate(recs[n][src]):
            f = sel(t[space]) if t and t[space] else [0.0] * (11 - len(drop))
            out.append(f + ([logit(cnn[n]["p_truth"][i])] if with_cnn else []))
        return out

    for train_src in ("truthmask", "sam_truthbox"):
        for space in ("full", "roi"):
            for with_cnn in (False, True):
                y, p, pa, yc = [], [], [], []
                for k in range(5):
                    train = [n for n in names if fold_of[roi_key(n)] != k]
                    X = [r for n in train for r in rows(n, train_src, space, with_cnn)]
                    Y = [recs[n]["category"] == "malignant" for n in train for _ in recs[n][train_src]]
                    model = make_pipeline(StandardScaler(),
                                          LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced")).fit(X, Y)
                    for n in (n for n in names if fold_of[roi_key(n)] == k):
                        y.append(recs[n]["category"] == "malignant")
                        p.append(max(model.predict_proba(rows(n, "sam_truthbox", space, with_cnn))[:, 1]))
                        a, findings = recs[n]["sam_auto"], cnn[n]["findings"]
                        if a and a[space] and findings:
                            extra = [logit(np.mean(findings[0]["p"][:3]))] if with_cnn else []
                            pa.append(model.predict_proba([sel(a[space]) + extra])[0, 1])
                            yc.append(y[-1])
                print(f"train={train_src:13s} space={space:4s} cnn={with_cnn!s:5s} SAM-truthbox AUC "
                      f"{roc_auc_score(y, p):.4f} balacc {balanced_accuracy_score(y, np.array(p) > 0.5):.4f} | "
                      f"auto top1 AUC {roc_auc_score(yc, pa):.4f} (n={len(yc)})")


if __name__ == "__main__":
    main(sys.argv[1:])
