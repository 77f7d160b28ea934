"""`branet evaluate`: a shipped classifier (and the segmenter) measured on any ImageFolder ROI folder.

Classification: every `benign/*.png` / `malignant/*.png` ROI is scored with the model as the pipeline loads it
(`MalignancyClassifier`, manifest threshold, TTA as recorded) -> metrics, `predictions.csv`, ROC and confusion
PNGs next to the report JSON.

Segmentation (when `<class>/masks/<roi file name>` exist): each mask is one lesion. Its image is
- the source image named in `manifest.csv` (`source`, relative to `--images` or else to the `source_root` that
  `branet prepare` recorded in `prepare.json`) when the mask has that image's size: the segmenter then works on
  the full image, as in the pipeline;
- otherwise the ROI itself, when the mask is ROI-sized (128x128): a hand-made folder can carry ROI-space masks.
Two paths are scored against the mask, Dice and IoU: (a) `box`: LiteMedSAM prompted with the mask's bounding box;
(b) `auto`: the modality's lesion detector proposes boxes on the image and the top proposal is segmented.
The image embedding is computed once per image and shared by all its lesions and both paths.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from branet_pacs.datasets.cases import load_gray, load_mask
from branet_pacs.datasets.rois import (CLASSES, list_roi_files, read_manifest, read_prepare_info, read_roi_png,
                                      roi_size_of)
from branet_pacs.evaluation import metrics as M
from branet_pacs.evaluation import plots
from branet_pacs.evaluation.metrics import dice_iou, json_safe
from branet_pacs.imaging.geometry import box_iou, mask_box
from branet_pacs.imaging.roi import ROI_SIZE, uint8_to_roi
from branet_pacs.models.errors import ModelUnavailable
from branet_pacs.models.manifest import read_manifest as read_model_manifest
from branet_pacs.models.runtime import configure_torch

log = logging.getLogger(__name__)


def load_model(model_dir: Path, device: str):
    """The classifier registered under the folder's name in the parent's manifest.json."""
    from branet_pacs.models.classifier import MalignancyClassifier

    model_dir = Path(model_dir)
    entries = [e for e in read_model_manifest(model_dir.parent) if e.name == model_dir.name and
               e.kind == "classifier"]
    if not entries:
        raise ModelUnavailable(f"no classifier named '{model_dir.name}' in {model_dir.parent / 'manifest.json'}")
    return MalignancyClassifier.load(model_dir.parent, entries[0].modality, device=device, name=model_dir.name)


def classify(data_dir: Path, classifier) -> tuple[list[str], np.ndarray, np.ndarray]:
    entries = list_roi_files(data_dir)
    files = [f for f, _ in entries]
    truth = np.array([label for _, label in entries], dtype=int)
    size = roi_size_of(data_dir)
    if size != classifier.roi_size:
        raise ValueError(f"{data_dir} holds {size}-pixel ROIs, classifier '{classifier.name}' reads "
                         f"{classifier.roi_size}: prepare them with --roi-size {classifier.roi_size}")
    rois = np.stack([uint8_to_roi(read_roi_png(data_dir / f, size)) for f in files])
    p = classifier.predict(rois)
    if classifier.feature_head is not None:
        from branet_pacs.train.lesion_features import head_features

        p = classifier.with_feature_head(p, head_features(data_dir, classifier.head_inputs, str(classifier.device)))
    return files, truth, p


def _mask_jobs(data_dir: Path, images_root: Path | None) -> tuple[dict[str, list[tuple[str, np.ndarray]]], list]:
    """{image key: [(roi file, mask)]} grouping lesions by the image they are segmented on; skipped reasons."""
    manifest = read_manifest(data_dir)
    root = Path(images_root) if images_root else Path(read_prepare_info(data_dir).get("source_root", data_dir))
    jobs: dict[str, list[tuple[str, np.ndarray]]] = defaultdict(list)
    skipped = []
    for roi_file, _ in list_roi_files(data_dir):
        label, name = roi_file.split("/", 1)
        mask_path = data_dir / label / "masks" / name
        if not mask_path.exists():
            continue
        mask = load_mask(mask_path)
        source = root / manifest[roi_file]["source"] if roi_file in manifest else None
        if source is not None and source.exists():
            with Image.open(source) as im:
                fits = (im.size[1], im.size[0]) == mask.shape
            if fits:
                jobs[f"image:{source}"].append((roi_file, mask))
                continue
        if mask.shape == (ROI_SIZE, ROI_SIZE):
            jobs[f"roi:{data_dir / roi_file}"].append((roi_file, mask))
        else:
            skipped.append(f"{roi_file}: mask {mask.shape} matches neither its source image nor the ROI")
    return jobs, skipped


def segment_lesions(data_dir: Path, modality: str, models_dir: Path, images_root: Path | None,
                    device: str) -> tuple[list[dict], dict]:
    """Per-lesion Dice/IoU for the box-prompt and automatic paths (see module docstring)."""
    from branet_pacs.config import load_config
    from branet_pacs.models.segmenter import LiteMedSAMSegmenter

    jobs, skipped = _mask_jobs(data_dir, images_root)
    if not jobs:
        return [], {"skipped": skipped}
    segmenter = LiteMedSAMSegmenter(device)
    try:
        from branet_pacs.models.detector import LesionDetector

        detector = LesionDetector.load(models_dir, modality, device=device)
        detector_note = f"{detector.name} {detector.version}"
    except (ModelUnavailable, ImportError) as exc:
        detector, detector_note = None, f"unavailable: {exc}"
    min_score = load_config().segmentation.min_proposal_score_for(modality)
    rows, below_min = [], 0
    for key in tqdm(sorted(jobs), desc="segment", unit="image", mininterval=5):
        kind, path = key.split(":", 1)
        image = load_gray(Path(path)) if kind == "image" else (uint8_to_roi(read_roi_png(Path(path))) + 1) / 2
        lesions = jobs[key]
        embedding = segmenter.embed(image)
        boxes = [mask_box(mask) for _, mask in lesions]
        box_masks = segmenter.decode(embedding, boxes)
        auto_mask, auto_box = None, None
        if detector is not None:
            proposals = detector.propose(image, max_proposals=1, min_score=0.0)
            if proposals:
                auto_box = proposals[0].box
                below_min += int(proposals[0].score < min_score)
                auto_mask = segmenter.decode(embedding, [auto_box])[0]
        for (roi_file, mask), box, pred in zip(lesions, boxes, box_masks):
            dice_box, iou_box = dice_iou(pred, mask)
            row = {"file": roi_file, "dice_box": dice_box, "iou_box": iou_box, "dice_auto": float("nan"),
                   "iou_auto": float("nan"), "proposal_box_iou": float("nan"), "frame": kind}
            if detector is not None:
                empty = np.zeros_like(mask)
                row["dice_auto"], row["iou_auto"] = dice_iou(auto_mask if auto_mask is not None else empty, mask)
                row["proposal_box_iou"] = box_iou(auto_box, box) if auto_box is not None else 0.0
            rows.append(row)
    info = {"skipped": skipped, "segmenter": segmenter.name, "detector": detector_note,
            "top_proposals_below_pipeline_min_score": below_min, "pipeline_min_score": min_score,
            "images": len(jobs)}
    return rows, info


def _stats(values: list[float]) -> dict:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return {"mean": float("nan"), "median": float("nan"), "n": 0}
    return {"mean": float(np.mean(finite)), "median": float(np.median(finite)), "n": len(finite)}


def evaluate(data_dir: str | Path, model_dir: str | Path, out: str | Path, *, images_root: str | Path | None = None,
             segmentation: bool = True, device: str = "auto", threads: int = 0) -> dict:
    data_dir, model_dir, out = Path(data_dir), Path(model_dir), Path(out)
    configure_torch(threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    classifier = load_model(model_dir, device)
    files, truth, p = classify(data_dir, classifier)
    threshold = classifier.threshold
    predicted = (p >= threshold).astype(int)
    with open(out.parent / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file", "truth", "p_malignant", "predicted"])
        for f, t, prob, pred in zip(files, truth, p, predicted):
            writer.writerow([f, CLASSES[t], f"{prob:.6f}", CLASSES[pred]])
    classification = M.binary_metrics(truth, p, threshold)
    figures = [plots.plot_confusion(classification["confusion_matrix"], out.parent / "confusion_matrix.png",
                                    title=f"{classifier.name}, threshold {threshold:.3f}")]
    if len(set(truth.tolist())) == 2:
        figures.append(plots.plot_roc([(classifier.name, truth, p)], out.parent / "roc.png", threshold))
    report = {"data": str(data_dir), "model": {"name": classifier.name, "version": classifier.version,
                                               "modality": classifier.modality, "tta": classifier.tta},
              "threshold": threshold, "classification": classification, "segmentation": None}
    if segmentation:
        rows, info = segment_lesions(data_dir, classifier.modality, model_dir.parent, images_root, device)
        if rows:
            with open(out.parent / "segmentation.csv", "w", newline="") as handle:
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerow(["file", "dice_box", "dice_auto"])
                for row in rows:
                    writer.writerow([row["file"], f"{row['dice_box']:.6f}",
                                     "" if math.isnan(row["dice_auto"]) else f"{row['dice_auto']:.6f}"])
            dice_box = [r["dice_box"] for r in rows]
            dice_auto = [r["dice_auto"] for r in rows]
            report["segmentation"] = {
                "n": len(rows), **info,
                "dice_box": _stats(dice_box), "iou_box": _stats([r["iou_box"] for r in rows]),
                "dice_auto": _stats(dice_auto), "iou_auto": _stats([r["iou_auto"] for r in rows]),
                "proposal_hit_rate_iou50": _stats([float(r["proposal_box_iou"] >= 0.5)
                                                   if not math.isnan(r["proposal_box_iou"]) else float("nan")
                                                   for r in rows])["mean"],
                "frames": sorted({r["frame"] for r in rows}),
            }
            figures.append(plots.plot_dice(dice_box, [0.0 if math.isnan(v) else v for v in dice_auto],
                                           out.parent / "dice.png"))
        elif info.get("skipped"):
            report["segmentation"] = {"n": 0, **info}
    report["figures"] = [str(f.name) for f in figures]
    out.write_text(json.dumps(json_safe(report), indent=2) + "\n")
    return json_safe(report)
