import json, sys, numpy as np
from sklearn.metrics import roc_auc_score
recs = [json.loads(l) for f in sys.argv[1:] for l in open(f)]
y = np.array([r["category"] == "malignant" for r in recs])
print("n", len(recs), "malignant", y.sum())
def auc(scores): return roc_auc_score(y, scores)
MI = {"m05":0,"m15":1,"m30":2,"m50":3,"pbox":4}
def rule(r, k=3, min_score=0.5, fallback=True, variant=("m15",), agg="max", weight=False):
    fs = r["findings"]
    sel = [f for f in fs if f["score"] >= min_score][:k]
    if not sel and fallback and fs: sel = fs[:1]
    if not sel: return 0.0
    ps = [np.mean([f["p"][MI[v]] for v in variant]) for f in sel]
    if agg == "max": return max(ps)
    if agg == "top": return ps[0]
    if agg == "wmean":
        w = np.array([f["score"] for f in sel]); return float(np.dot(w, ps) / w.sum())
truth = [max(r["p_truth"]) if r["p_truth"] else 0 for r in recs]
print("classifier on true box (max):", round(auc(truth), 4))
print("current rule (k3, min .5, no fallback):", round(auc([rule(r, fallback=False) for r in recs]), 4))
for fb in (False, True):
  for ms in (0.3, 0.5):
    for k in (1, 2, 3, 5):
      for agg in ("max", "wmean"):
        for var in (("m15",), ("m05","m15","m30"), ("m15","m30"), ("m30",), ("m15","m30","m50"), ("m15","pbox")):
          s = [rule(r, k, ms, fb, var, agg) for r in recs]
          print(f"fb={fb} min={ms} k={k} agg={agg} var={'+'.join(var)}: {auc(s):.4f}")
nof = [r for r in recs if not any(f["score"]>=0.5 for f in r["findings"])]
print("no finding >=0.5:", len(nof), "of which malignant", sum(r["category"]=="malignant" for r in nof), "no proposal at all", sum(not r["findings"] for r in recs))
hit = np.array([max([f["iou"] for f in r["findings"][:1]], default=0) for r in recs])
print("top1 hit@.5", (hit>=.5).mean(), "any top3 hit", np.mean([max([f["iou"] for f in r["findings"][:3]], default=0)>=.5 for r in recs]))
