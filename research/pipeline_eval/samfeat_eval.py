"""A logistic regression on the `samfeat.py` features, on the classifier's folds, alone and averaged with the CNN.

    python research/pipeline_eval/samfeat_eval.py [FEATURES_GLOB [CNN_RECORDS [MODEL_DIR]]]
"""
import glob
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from branet_pacs.evaluation.images import roi_key

from common import US_FOLDS, US_RECORDS, fold_of_images, read_records


def main(argv: list[str]) -> None:
    feats = read_records(glob.glob(argv[0] if argv else "var/exp/samfeat-*.jsonl"))
    cnn = read_records(argv[1].split(",") if len(argv) > 1 else US_RECORDS)
    fold_of = fold_of_images(argv[2] if len(argv) > 2 else US_FOLDS)
    names = [n for n in feats if roi_key(n) in fold_of]
    print("images", len(names))
    for C in (0.01, 0.1, 1.0):
        res = {"lr_truth": [], "lr_auto": [], "y": [], "cnn_auto": [], "cnn_truth": []}
        for k in range(5):
            train = [n for n in names if fold_of[roi_key(n)] != k]
            X = [v for n in train for v in feats[n]["truth"]]
            Y = [feats[n]["category"] == "malignant" for n in train for _ in feats[n]["truth"]]
            model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000, class_weight="balanced"))
            model.fit(X, Y)
            for n in (n for n in names if fold_of[roi_key(n)] == k):
                r = feats[n]
                res["y"].append(r["category"] == "malignant")
                res["lr_truth"].append(max(model.predict_proba(r["truth"])[:, 1]) if r["truth"] else 0)
                res["lr_auto"].append(model.predict_proba([r["auto"]])[0, 1] if "auto" in r else 0)
                findings = cnn[n]["findings"]
                res["cnn_auto"].append(float(np.mean(findings[0]["p"][:3])) if findings else 0)  # margin views
                res["cnn_truth"].append(max(cnn[n]["p_truth"], default=0))
        y = np.array(res["y"])
        aucs = {k: round(roc_auc_score(y, v), 4) for k, v in res.items() if k != "y"}
        both_auto = roc_auc_score(y, np.array(res["lr_auto"]) + np.array(res["cnn_auto"]))
        both_truth = roc_auc_score(y, np.array(res["lr_truth"]) + np.array(res["cnn_truth"]))
        print(f"C={C}", aucs, "mean auto", round(both_auto, 4), "mean truth", round(both_truth, 4))


if __name__ == "__main__":
    main(sys.argv[1:])
