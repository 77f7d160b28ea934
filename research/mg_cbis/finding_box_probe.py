"""Which box should the MG classifier read on the automatic path: the segmenter's mask box (the product until 2.1.0)
or the detector's proposal box?

The MG classifier and its feature head are trained on CBIS-DDSM's boxes, with the box's inscribed ellipse as the
lesion mask. On whole films the product cuts the ROI, the crop and the descriptors from the LiteMedSAM mask's box.
Out of fold (detector fold members, classifier fold models: the same films and models as `branet evaluate-images
--out-of-fold --limit N`), each finding is scored both ways; reported per box source: image-level AUC (highest
p(malignant) per film), hit rate at IoU 0.3 / 0.5 of the best finding, a patient-bootstrap CI of the AUC
difference; and, geometry only, the hit rates of the proposal box scaled about its centre.

    python research/mg_cbis/finding_box_probe.py --data cbis-ddsm ../shared/data/cbis-ddsm --limit 300 \
        --classifier var/exp/mg21/mg-resnet18 --out var/exp/finding-box-probe.json
"""
import argparse
import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from branet_pacs.config import load_config
from branet_pacs.evaluation.images import OutOfFoldModels, breast_image, read_cases
from branet_pacs.imaging.geometry import box_iou, mask_box
from branet_pacs.models.feature_head import lesion_feature_rows
from branet_pacs.pipeline import Analyzer, classifier_view, distinct_lesions
from common import grouped_bootstrap

SCALES = (0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5)
BOX_SOURCES = {"mask": "mask", "proposal": "prompt"}   # report name -> the pipeline's lesion_box


def scaled(box, s):
    cx, cy, w, h = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]
    return (cx - s * w / 2, cy - s * h / 2, cx + s * w / 2, cy + s * h / 2)


def score_film(analyzer: Analyzer, image, margin: float) -> list[dict]:
    """Each finding of the automatic path with p(malignant) read on its mask box and on its proposal box."""
    classifier = analyzer.classifier(image.modality)
    prompts = analyzer.prompts(image, None)
    if not prompts:
        return []
    encoder = analyzer.lesion_encoder()
    embedding = encoder.embed(image.pixels)
    kept = distinct_lesions(image, prompts, encoder.decode(embedding, [p.box for p in prompts]))
    rows = []
    views = {source: classifier_view(lesion_box, image, kept) for source, lesion_box in BOX_SOURCES.items()}
    for index, (prompt, _, _) in enumerate(kept):
        row = {"score": prompt.score}
        for source, view in views.items():
            mask, box = view[index]
            features = lesion_feature_rows(classifier.head_inputs, image.pixels, encoder, embedding, [mask], [box])
            row[f"{source}_box"] = box
            row[f"p_{source}"] = float(classifier.predict_boxes(image.pixels, [box], margin, features)[0])
        rows.append(row)
    return rows


def summary(films: list[dict], source: str) -> dict:
    """AUC of the highest p(malignant) over each film's findings (also over its best 1 and 2 by detector score only),
    and the best finding's hit rates."""
    y = np.array([f["malignant"] for f in films])
    top = {k: np.array([max((r[f"p_{source}"] for r in f["findings"][:k]), default=0.0) for f in films])
           for k in (1, 2, 3)}
    iou = np.array([max((box_iou(r[f"{source}_box"], t) for r in f["findings"] for t in f["truth"]), default=0.0)
                    for f in films])
    return {"auc": float(roc_auc_score(y, top[3])), "auc_top1": float(roc_auc_score(y, top[1])),
            "auc_top2": float(roc_auc_score(y, top[2])), "hit_iou30": float((iou >= 0.3).mean()),
            "hit_iou50": float((iou >= 0.5).mean()), "p": top[3]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", nargs=2, action="append", metavar=("DATASET", "SRC"), required=True)
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--classifier", type=Path, help="classifier folder with fold checkpoints")
    parser.add_argument("--models-dir", type=Path, default=Path(load_config().models_dir))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0, help="torch / ONNX threads (0: all cores)")
    args = parser.parse_args()
    cases_by_dataset = read_cases([(name, Path(src)) for name, src in args.data])
    modality = "MG"
    analyzer = Analyzer(dataclasses.replace(load_config(), threads=args.threads))
    oof = OutOfFoldModels(args.models_dir.resolve(), modality, cases_by_dataset, "cpu", args.classifier)
    chosen = [c for cases in cases_by_dataset.values() for c in cases if c.category != "normal"]
    chosen = chosen[:: max(1, len(chosen) // args.limit)][:args.limit]
    margin = analyzer.roi_margin(modality)
    films = []
    for case in tqdm(chosen, desc="films", mininterval=10):
        oof.configure(analyzer, case, modality)
        films.append({"name": case.name, "group": case.group, "malignant": case.category == "malignant",
                      "truth": [mask_box(lesion.mask) for lesion in case.lesions],
                      "findings": score_film(analyzer, breast_image(case, modality), margin)})
    report = {source: summary(films, source) for source in BOX_SOURCES}
    low, _, high = grouped_bootstrap(np.array([f["malignant"] for f in films]), np.array([f["group"] for f in films]),
                                     report["proposal"]["p"], report["mask"]["p"], n=2000)
    report["proposal_minus_mask_auc_ci95"] = [low, high]
    report["proposal_scaled_hits"] = {
        str(s): [float(np.mean([max((box_iou(scaled(r["proposal_box"], s), t) for r in f["findings"]
                                     for t in f["truth"]), default=0.0) >= level for f in films]))
                 for level in (0.3, 0.5)] for s in SCALES}
    for source in BOX_SOURCES:
        report[source].pop("p")
    report["films"] = len(films)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    with open(args.out.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["film", "malignant", "truth", "score", "mask_box", "proposal_box", "p_mask", "p_proposal"])
        for f in films:
            for r in f["findings"]:
                writer.writerow([f["name"], int(f["malignant"]), f["truth"], f"{r['score']:.4f}", r["mask_box"],
                                 r["proposal_box"], f"{r['p_mask']:.4f}", f"{r['p_proposal']:.4f}"])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
