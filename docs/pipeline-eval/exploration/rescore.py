"""Re-score explore records' top finding (and true boxes) with other classifiers' fold models (same folds)."""
import glob, json, sys
from pathlib import Path
import numpy as np
from sklearn.metrics import roc_auc_score
from branet_pacs.imaging.geometry import mask_box
from branet_pacs.imaging.roi import extract_roi
from branet_pacs.models.classifier import load_classifier_networks, MalignancyClassifier
from branet_pacs.models.manifest import find_model
from branet_pacs.models.runtime import configure_torch
from branet_pacs.train.detector import iter_busi
from branet_pacs.train.image_eval import _roi_key
import torch
configure_torch(1)
records = {r["name"]: r for f in ("var/exp/usj25-0.jsonl", "var/exp/usj25-1.jsonl") for l in open(f) for r in [json.loads(l)]}
entry = find_model(Path("models"), "classifier", "US")
def fold_models(model_dir):
    out = {}
    for done in sorted(glob.glob(f"{model_dir}/checkpoints/fold*/done.json")):
        clf = MalignancyClassifier(entry, load_classifier_networks(Path(done).parent / "best.safetensors"), torch.device("cpu"))
        for f in json.load(open(done))["val_files"]:
            out[_roi_key(f)] = clf
    return out
models = {d: fold_models(d) for d in sys.argv[1:]}
y, auto, truth = [], {d: [] for d in models}, {d: [] for d in models}
for case in iter_busi(Path("../shared/data/busi")):
    if case.category == "normal" or case.name not in records:
        continue
    r = records[case.name]; y.append(case.category == "malignant")
    img = case.image.astype(np.float32)
    tboxes = [mask_box(m) for m in case.lesions if m.any()]
    for d, fm in models.items():
        clf = fm[_roi_key(case.name)]
        auto[d].append(float(clf.predict_boxes(img, [tuple(r["findings"][0]["box"])], 0.15)[0]) if r["findings"] else 0.0)
        truth[d].append(float(clf.predict(np.stack([extract_roi(img, b, 0.15) for b in tboxes])).max()))
y = np.array(y)
for d in models:
    print(d, "auto", round(roc_auc_score(y, auto[d]), 4), "truth", round(roc_auc_score(y, truth[d]), 4))
print("ensemble auto", round(roc_auc_score(y, np.mean([auto[d] for d in models], 0)), 4),
      "truth", round(roc_auc_score(y, np.mean([truth[d] for d in models], 0)), 4))
