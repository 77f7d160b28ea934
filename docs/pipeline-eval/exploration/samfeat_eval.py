import json, glob, sys, numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.pipeline import make_pipeline
from sklearn.metrics import roc_auc_score
from branet_pacs.train.image_eval import _roi_key
feats = {r["name"]: r for f in glob.glob(sys.argv[1] if len(sys.argv) > 1 else "var/exp/samfeat-*.jsonl") for l in open(f) for r in [json.loads(l)]}
cnn = {r["name"]: r for f in (sys.argv[2].split(",") if len(sys.argv) > 2 else ("var/exp/usj25-0.jsonl", "var/exp/usj25-1.jsonl")) for l in open(f) for r in [json.loads(l)]}
fold_of = {}
for k, d in enumerate(sorted(glob.glob((sys.argv[3] if len(sys.argv) > 3 else "var/train/us-resnet18-j25") + "/checkpoints/fold*/done.json"))):
    for f in json.load(open(d))["val_files"]: fold_of[_roi_key(f)] = k
names = [n for n in feats if _roi_key(n) in fold_of]
print("images", len(names))
for C in (0.01, 0.1, 1.0):
    res = {"lr_truth": [], "lr_auto": [], "y": [], "cnn_auto": [], "cnn_truth": []}
    for k in range(5):
        tr = [n for n in names if fold_of[_roi_key(n)] != k]; va = [n for n in names if fold_of[_roi_key(n)] == k]
        X = [v for n in tr for v in feats[n]["truth"]]; Y = [feats[n]["category"] == "malignant" for n in tr for _ in feats[n]["truth"]]
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000, class_weight="balanced")).fit(X, Y)
        for n in va:
            r = feats[n]
            res["y"].append(r["category"] == "malignant")
            res["lr_truth"].append(max(model.predict_proba(r["truth"])[:, 1]) if r["truth"] else 0)
            res["lr_auto"].append(model.predict_proba([r["auto"]])[0, 1] if "auto" in r else 0)
            fs = cnn[n]["findings"]
            res["cnn_auto"].append(float(np.mean(fs[0]["p"][:3])) if fs else 0)  # top candidate, margin views
            res["cnn_truth"].append(max(cnn[n]["p_truth"], default=0))
    y = np.array(res["y"])
    a = {k: roc_auc_score(y, v) for k, v in res.items() if k != "y"}
    comb_auto = roc_auc_score(y, np.array(res["lr_auto"]) + np.array(res["cnn_auto"]))
    comb_truth = roc_auc_score(y, np.array(res["lr_truth"]) + np.array(res["cnn_truth"]))
    print(f"C={C}", {k: round(v, 4) for k, v in a.items()}, "mean auto", round(comb_auto, 4), "mean truth", round(comb_truth, 4))
