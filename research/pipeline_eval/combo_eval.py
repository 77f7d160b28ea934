"""CNN + LiteMedSAM-mask shape descriptors + LiteMedSAM-embedding features, stacked or averaged (true boxes, the
classifier's folds).

    python research/pipeline_eval/combo_eval.py
"""
import glob

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from branet_pacs.evaluation.images import roi_key

from common import US_FOLDS, US_RECORDS, fold_of_images, read_records
from samshape_eval import logit


def main(argv: list[str] | None = None) -> None:
    recs = read_records(glob.glob("var/exp/samshape-*.jsonl"))
    sam = read_records(glob.glob("var/exp/samfeat-*.jsonl"))
    cnn = read_records(US_RECORDS)
    fold_of = fold_of_images(US_FOLDS)
    names = [n for n in recs if roi_key(n) in fold_of and n in cnn and n in sam]
    y = np.array([recs[n]["category"] == "malignant" for n in names])
    cnn_p = np.array([max(cnn[n]["p_truth"]) for n in names])
    print("cnn alone", round(roc_auc_score(y, cnn_p), 4))

    def feats(n, i, parts):
        row = []
        if "shape" in parts:
            row += recs[n]["sam_truthbox"][i]["full"]
        if "emb" in parts:
            row += sam[n]["truth"][i]
        if "cnn" in parts:
            row += [logit(cnn[n]["p_truth"][i])]
        return row

    def oof(parts, C):
        """Per image, per lesion, out-of-fold p(malignant) of a logistic regression on `parts`."""
        p = {}
        for k in range(5):
            train = [n for n in names if fold_of[roi_key(n)] != k]
            X = [feats(n, i, parts) for n in train for i in range(len(recs[n]["sam_truthbox"]))]
            Y = [recs[n]["category"] == "malignant" for n in train for _ in recs[n]["sam_truthbox"]]
            model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000, class_weight="balanced"))
            model.fit(X, Y)
            for n in names:
                if fold_of[roi_key(n)] == k:
                    p[n] = model.predict_proba([feats(n, i, parts) for i in range(len(recs[n]["sam_truthbox"]))])[:, 1]
        return p

    for parts, C in [(("shape", "cnn"), 1.0), (("emb", "cnn"), 0.01), (("shape", "emb", "cnn"), 0.01),
                     (("shape", "emb", "cnn"), 0.003), (("shape", "emb", "cnn"), 0.03)]:
        stacked = oof(parts, C)
        p = np.array([max(stacked[n]) for n in names])
        print(parts, C, "AUC", round(roc_auc_score(y, p), 4), "balacc", round(balanced_accuracy_score(y, p > 0.5), 4))
    print("--- averaging separate models")
    ps, pe = oof(("shape",), 1.0), oof(("emb",), 0.01)
    pc = {n: np.array(cnn[n]["p_truth"]) for n in names}
    for ws, we, wc in [(0, 1, 1), (1, 0, 1), (1, 1, 1), (1, 1, 2), (0.5, 1, 1), (1, 0.5, 1)]:
        p = np.array([max((ws * ps[n] + we * pe[n] + wc * pc[n]) / (ws + we + wc)) for n in names])
        best = max(balanced_accuracy_score(y, p > t) for t in np.linspace(0.1, 0.9, 81))
        print((ws, we, wc), round(roc_auc_score(y, p), 4), "balacc(best thr)", round(best, 4))
    print("cnn", round(max(balanced_accuracy_score(y, cnn_p > t) for t in np.linspace(0.05, 0.95, 91)), 4))


if __name__ == "__main__":
    main()
