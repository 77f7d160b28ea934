"""The LiteMedSAM-feature head across sites: a logistic regression on `sam_features.py` features, trained on one site
and scored on the other (both directions), for a few regularisation strengths; and within each site, grouped CV.

    python research/us_sites/sam_head_loso.py var/exp/samfeat-busi.npz var/exp/samfeat-bus-uclm.npz
"""
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def head(C: float):
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000, class_weight="balanced"))


def main(argv: list[str]) -> None:
    sites = {path.split("samfeat-")[-1].removesuffix(".npz"): np.load(path) for path in argv}
    for C in (0.001, 0.003, 0.01, 0.03, 0.1):
        row = []
        for train, test in ((a, b) for a in sites for b in sites if a != b):
            model = head(C).fit(sites[train]["features"], sites[train]["labels"])
            p = model.predict_proba(sites[test]["features"])[:, 1]
            row.append(f"{train}->{test} {roc_auc_score(sites[test]['labels'], p):.4f}")
        for name, data in sites.items():
            p = np.zeros(len(data["labels"]))
            for tr, va in StratifiedGroupKFold(5, shuffle=True, random_state=0).split(
                    data["features"], data["labels"], data["groups"]):
                p[va] = head(C).fit(data["features"][tr], data["labels"][tr]).predict_proba(data["features"][va])[:, 1]
            row.append(f"{name} grouped-CV {roc_auc_score(data['labels'], p):.4f}")
        print(f"C={C}: " + "  ".join(row))


if __name__ == "__main__":
    main(sys.argv[1:])
