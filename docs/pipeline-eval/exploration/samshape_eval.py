"""Exploration: out-of-fold AUC of shape features from truth masks vs LiteMedSAM masks (truth-box and automatic prompts), alone and stacked with the CNN."""
import json, glob, sys, numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.pipeline import make_pipeline
from sklearn.metrics import roc_auc_score, balanced_accuracy_score
from branet_pacs.train.image_eval import _roi_key
recs = {r["name"]: r for f in glob.glob("var/exp/samshape-*.jsonl") for l in open(f) for r in [json.loads(l)]}
cnn = {r["name"]: r for f in ("var/exp/usj25-0.jsonl", "var/exp/usj25-1.jsonl") for l in open(f) for r in [json.loads(l)]}
fold_of = {}
for k, d in enumerate(sorted(glob.glob("var/train/us-resnet18-j25/checkpoints/fold*/done.json"))):
    for f in json.load(open(d))["val_files"]: fold_of[_roi_key(f)] = k
names = [n for n in recs if _roi_key(n) in fold_of and n in cnn]
print("images", len(names))
def logit(p): p = np.clip(p, 1e-4, 1 - 1e-4); return np.log(p / (1 - p))
drop = [int(a) for a in sys.argv[1].split(",")] if len(sys.argv) > 1 and sys.argv[1] else []
def sel(f): return [v for i, v in enumerate(f) if i not in drop]
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
            tr = [n for n in names if fold_of[_roi_key(n)] != k]; va = [n for n in names if fold_of[_roi_key(n)] == k]
            X = [r for n in tr for r in rows(n, train_src, space, with_cnn)]; Y = [recs[n]["category"] == "malignant" for n in tr for _ in recs[n][train_src]]
            m = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced")).fit(X, Y)
            for n in va:
                y.append(recs[n]["category"] == "malignant"); p.append(max(m.predict_proba(rows(n, "sam_truthbox", space, with_cnn))[:, 1]))
                a = recs[n]["sam_auto"]; fs = cnn[n]["findings"]
                if a and a[space] and fs:
                    pa.append(m.predict_proba([sel(a[space]) + ([logit(np.mean(fs[0]["p"][:3]))] if with_cnn else [])])[0, 1]); yc.append(y[-1])
        print(f"train={train_src:13s} space={space:4s} cnn={with_cnn!s:5s} SAM-truthbox AUC {roc_auc_score(y, p):.4f} balacc {balanced_accuracy_score(y, np.array(p) > 0.5):.4f} | auto top1 AUC {roc_auc_score(yc, pa):.4f} (n={len(yc)})")
