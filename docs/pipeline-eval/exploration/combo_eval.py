"""Exploration: CNN + SAM-mask shape features + LiteMedSAM-embedding features, stacked or averaged (true boxes, same folds)."""
import json, glob, numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline
from sklearn.metrics import roc_auc_score, balanced_accuracy_score
from branet_pacs.train.image_eval import _roi_key
recs = {r["name"]: r for f in glob.glob("var/exp/samshape-*.jsonl") for l in open(f) for r in [json.loads(l)]}
sam = {r["name"]: r for f in glob.glob("var/exp/samfeat-*.jsonl") for l in open(f) for r in [json.loads(l)]}
cnn = {r["name"]: r for f in ("var/exp/usj25-0.jsonl", "var/exp/usj25-1.jsonl") for l in open(f) for r in [json.loads(l)]}
fold_of = {}
for k, d in enumerate(sorted(glob.glob("var/train/us-resnet18-j25/checkpoints/fold*/done.json"))):
    for f in json.load(open(d))["val_files"]: fold_of[_roi_key(f)] = k
names = [n for n in recs if _roi_key(n) in fold_of and n in cnn and n in sam]
def logit(p): p = np.clip(p, 1e-4, 1 - 1e-4); return np.log(p / (1 - p))
y = np.array([recs[n]["category"] == "malignant" for n in names])
cnn_p = np.array([max(cnn[n]["p_truth"]) for n in names])
print("cnn alone", round(roc_auc_score(y, cnn_p), 4))
def feats(n, i, parts):
    r = []
    if "shape" in parts: r += recs[n]["sam_truthbox"][i]["full"]
    if "emb" in parts: r += sam[n]["truth"][i]
    if "cnn" in parts: r += [logit(cnn[n]["p_truth"][i])]
    return r
for parts, C in [(("shape", "cnn"), 1.0), (("emb", "cnn"), 0.01), (("shape", "emb", "cnn"), 0.01), (("shape", "emb", "cnn"), 0.003), (("shape", "emb", "cnn"), 0.03)]:
    p = np.zeros(len(names))
    for k in range(5):
        tr = [n for n in names if fold_of[_roi_key(n)] != k]
        X = [feats(n, i, parts) for n in tr for i in range(len(recs[n]["sam_truthbox"]))]
        Y = [recs[n]["category"] == "malignant" for n in tr for _ in recs[n]["sam_truthbox"]]
        m = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000, class_weight="balanced")).fit(X, Y)
        for j, n in enumerate(names):
            if fold_of[_roi_key(n)] == k:
                p[j] = max(m.predict_proba([feats(n, i, parts) for i in range(len(recs[n]["sam_truthbox"]))])[:, 1])
    print(parts, C, "AUC", round(roc_auc_score(y, p), 4), "balacc", round(balanced_accuracy_score(y, p > 0.5), 4))
print("--- averaging separate models")
def oof(parts, C):
    p = {}
    for k in range(5):
        tr = [n for n in names if fold_of[_roi_key(n)] != k]
        X = [feats(n, i, parts) for n in tr for i in range(len(recs[n]["sam_truthbox"]))]
        Y = [recs[n]["category"] == "malignant" for n in tr for _ in recs[n]["sam_truthbox"]]
        m = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000, class_weight="balanced")).fit(X, Y)
        for n in names:
            if fold_of[_roi_key(n)] == k:
                p[n] = m.predict_proba([feats(n, i, parts) for i in range(len(recs[n]["sam_truthbox"]))])[:, 1]
    return p
ps, pe = oof(("shape",), 1.0), oof(("emb",), 0.01)
pc = {n: np.array(cnn[n]["p_truth"]) for n in names}
from itertools import product
for ws, we, wc in [(0, 1, 1), (1, 0, 1), (1, 1, 1), (1, 1, 2), (0.5, 1, 1), (1, 0.5, 1)]:
    p = np.array([max((ws * ps[n] + we * pe[n] + wc * pc[n]) / (ws + we + wc)) for n in names])
    print((ws, we, wc), round(roc_auc_score(y, p), 4), "balacc(best thr)", round(max(balanced_accuracy_score(y, p > t) for t in np.linspace(0.1, 0.9, 81)), 4))
p = cnn_p; print("cnn", round(max(balanced_accuracy_score(y, p > t) for t in np.linspace(0.05, 0.95, 91)), 4))
