"""Image-level AUC of alternative scoring rules (fallback, number of findings, aggregation, margin views) on
`explore.py` records.

    python research/pipeline_eval/analyse.py A.jsonl [B.jsonl ...]
"""
import json
import sys

import numpy as np
from sklearn.metrics import roc_auc_score

MARGIN_INDEX = {"m05": 0, "m15": 1, "m30": 2, "m50": 3, "pbox": 4}


def rule(record, k=3, min_score=0.5, fallback=True, variant=("m15",), agg="max"):
    findings = record["findings"]
    chosen = [f for f in findings if f["score"] >= min_score][:k]
    if not chosen and fallback and findings:
        chosen = findings[:1]
    if not chosen:
        return 0.0
    ps = [np.mean([f["p"][MARGIN_INDEX[v]] for v in variant]) for f in chosen]
    if agg == "max":
        return max(ps)
    if agg == "top":
        return ps[0]
    weights = np.array([f["score"] for f in chosen])
    return float(np.dot(weights, ps) / weights.sum())


def main(argv: list[str]) -> None:
    records = [json.loads(line) for path in argv for line in open(path)]
    y = np.array([r["category"] == "malignant" for r in records])
    print("n", len(records), "malignant", y.sum())
    truth = [max(r["p_truth"]) if r["p_truth"] else 0 for r in records]
    print("classifier on true box (max):", round(roc_auc_score(y, truth), 4))
    print("current rule (k3, min .5, no fallback):",
          round(roc_auc_score(y, [rule(r, fallback=False) for r in records]), 4))
    variants = (("m15",), ("m05", "m15", "m30"), ("m15", "m30"), ("m30",), ("m15", "m30", "m50"), ("m15", "pbox"))
    for fallback in (False, True):
        for min_score in (0.3, 0.5):
            for k in (1, 2, 3, 5):
                for agg in ("max", "wmean"):
                    for variant in variants:
                        scores = [rule(r, k, min_score, fallback, variant, agg) for r in records]
                        print(f"fb={fallback} min={min_score} k={k} agg={agg} var={'+'.join(variant)}: "
                              f"{roc_auc_score(y, scores):.4f}")
    without = [r for r in records if not any(f["score"] >= 0.5 for f in r["findings"])]
    print("no finding >=0.5:", len(without), "of which malignant", sum(r["category"] == "malignant" for r in without),
          "no proposal at all", sum(not r["findings"] for r in records))
    hit = np.array([max([f["iou"] for f in r["findings"][:1]], default=0) for r in records])
    print("top1 hit@.5", (hit >= .5).mean(), "any top3 hit",
          np.mean([max([f["iou"] for f in r["findings"][:3]], default=0) >= .5 for r in records]))


if __name__ == "__main__":
    main(sys.argv[1:])
