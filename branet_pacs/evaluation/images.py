"""`branet evaluate-images`: the whole automatic pipeline on whole images, scored the way a user meets it.

Each image (a BUSI US frame or a mini-MIAS film) goes through the detector -> segmenter -> ROI -> classifier path with
no box given; its score is the highest p(malignant) over its findings (0 when nothing is found). Reported: image-level
ROC AUC benign vs malignant (and lesion vs normal when normal images are included), sensitivity/specificity at the
classifier's threshold, and how often a finding overlaps a true lesion (box IoU >= 0.5 / 0.3).

`--out-of-fold` makes the figures honest on the development data: every image is analysed by the detector fold member
and the classifier fold model that did not see it in training (fold assignments are recomputed exactly as training
made them). Without it the shipped models are used, which on their own training data is optimistic.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from branet_pacs.config import load_config
from branet_pacs.datasets.cases import Case
from branet_pacs.datasets.folds import make_folds
from branet_pacs.datasets.readers import READERS, modality_of, read_dataset
from branet_pacs.imaging.breast import detection_region
from branet_pacs.imaging.geometry import box_iou, mask_box
from branet_pacs.models.manifest import find_model, verified_weights_path
from branet_pacs.pipeline import Analyzer
from branet_pacs.types import BreastImage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageScore:
    name: str
    category: str
    score: float
    findings: int
    best_iou: float


def breast_image(case: Case, modality: str) -> BreastImage:
    """A dataset image as the pipeline sees an ingested one (the breast mask on mammograms, as ingest makes it)."""
    pixels = case.pixels().astype(np.float32)
    h, w = pixels.shape
    header = pydicom.Dataset()
    header.SOPInstanceUID = header.StudyInstanceUID = "2.25.0"
    return BreastImage(dataset=header, pixels=pixels, modality=modality, frame_number=None, frame_shape=(h, w),
                       region=(0, 0, w, h), breast_mask=detection_region(pixels, modality), source=case.name)


def roi_key(name: str) -> str:
    """'benign/benign (106)-1.png' or 'mdb028' -> the source image key shared by ROIs and cases."""
    stem = Path(name).name
    stem = stem[:-4] if stem.endswith(".png") else stem
    return re.sub(r"-\d+$", "", stem) if name.endswith(".png") else stem


class OutOfFoldModels:
    """For each case, the detector member and classifier fold model that did not train on it."""

    def __init__(self, models_dir: Path, modality: str, cases: list, device: str) -> None:
        from branet_pacs.models.classifier import MalignancyClassifier, load_classifier_networks
        from branet_pacs.models.detector import HeatmapEnsemble, LesionDetector
        from branet_pacs.models.runtime import select_device

        torch_device = select_device(device)
        entry = find_model(models_dir, "detector", modality)
        shipped = LesionDetector.from_weights(verified_weights_path(models_dir, entry), name=entry.name,
                                              version=entry.version, modality=modality, device=torch_device)
        metrics = json.loads((models_dir / entry.name / "metrics.json").read_text())
        cv = metrics["cross_validation"]
        members = list(shipped.net.members)
        if len(members) != cv["folds"]:
            raise SystemExit(f"{entry.name}: {len(members)} members but {cv['folds']} folds; cannot go out of fold")
        names = [c.name for c in cases]
        # repeat the detector's split: grouped since 2.0; 1.0.0 grouped MIAS by patient and split BUSI by image
        grouped = cv.get("grouped", cv.get("grouped_by_patient", False))
        splits = make_folds([c.category for c in cases], [c.group for c in cases] if grouped else None,
                            cv["folds"], cv.get("seed", 0))
        self.detector_of: dict[str, object] = {}
        for fold, (_, val) in enumerate(splits):
            detector = LesionDetector(net=HeatmapEnsemble([members[fold]]), spec=shipped.spec, name=entry.name,
                                      version=f"{entry.version}-fold{fold}", modality=modality, device=torch_device)
            for index in val:
                self.detector_of[names[index]] = detector

        clf_entry = find_model(models_dir, "classifier", modality)
        checkpoints = models_dir / clf_entry.name / "checkpoints"
        self.shipped_classifier = MalignancyClassifier.load(models_dir, modality, device=device)
        self.classifier_of: dict[str, object] = {}
        folds = sorted(checkpoints.glob("fold*/done.json"))
        if not folds:
            raise SystemExit(f"no fold checkpoints under {checkpoints}: train with `branet train` first")
        for done in folds:
            val_files = json.loads(done.read_text())["val_files"]
            nets = [n.to(torch_device) for n in load_classifier_networks(done.parent / "best.safetensors")]
            classifier = MalignancyClassifier(clf_entry, nets, torch_device)
            for file in val_files:
                self.classifier_of[roi_key(file)] = classifier

    def configure(self, analyzer: Analyzer, case, modality: str) -> None:
        analyzer.use("detector", modality, self.detector_of[case.name])
        # Images without ROIs (normal) never trained the classifier: the shipped one has not seen them.
        analyzer.use("classifier", modality,
                     self.classifier_of.get(roi_key(case.name), self.shipped_classifier))


def evaluate_images(data: str, src: Path, models_dir: Path, include_normal: bool, out_of_fold: bool,
                    limit: int | None = None, device: str = "auto") -> tuple[dict, list[ImageScore]]:
    modality = modality_of(data)
    cases = [c for c in read_dataset(data, src) if c.complete]   # the images the detector was trained on
    config = dataclasses.replace(load_config(), models_dir=str(models_dir))
    analyzer = Analyzer(config)
    oof = OutOfFoldModels(models_dir, modality, cases, device) if out_of_fold else None
    chosen = [c for c in cases if include_normal or c.category != "normal"]
    if limit:
        chosen = chosen[:: max(1, len(chosen) // limit)][:limit]
    scores: list[ImageScore] = []
    for case in tqdm(chosen, desc=f"evaluate {data}", unit="image"):
        if oof:
            oof.configure(analyzer, case, modality)
        findings = analyzer.find_lesions(breast_image(case, modality))
        truth = [mask_box(lesion.mask) for lesion in case.lesions]
        best_iou = max((box_iou(f.box, t) for f in findings for t in truth if t), default=0.0)
        scores.append(ImageScore(case.name, case.category, max((f.p_malignant for f in findings), default=0.0),
                                 len(findings), best_iou))
    return summarise(scores, modality, out_of_fold, analyzer), scores


def summarise(scores: list[ImageScore], modality: str, out_of_fold: bool, analyzer: Analyzer) -> dict:
    lesion = [s for s in scores if s.category in ("benign", "malignant")]
    y = np.array([s.category == "malignant" for s in lesion])
    p = np.array([s.score for s in lesion])
    threshold = analyzer.classifier(modality).threshold
    report = {
        "modality": modality, "out_of_fold": out_of_fold, "images": len(scores),
        "benign": int((~y).sum()), "malignant": int(y.sum()), "normal": sum(s.category == "normal" for s in scores),
        "auc_benign_vs_malignant": float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None,
        "threshold": threshold,
        "sensitivity": float((p[y] >= threshold).mean()) if y.any() else None,
        "specificity": float((p[~y] < threshold).mean()) if (~y).any() else None,
        "lesion_images_with_finding": float(np.mean([s.findings > 0 for s in lesion])) if lesion else None,
        "lesion_hit_rate_iou50": float(np.mean([s.best_iou >= 0.5 for s in lesion])) if lesion else None,
        "lesion_hit_rate_iou30": float(np.mean([s.best_iou >= 0.3 for s in lesion])) if lesion else None,
    }
    normal = [s for s in scores if s.category == "normal"]
    if normal:
        report["normal_images_with_finding"] = float(np.mean([s.findings > 0 for s in normal]))
        yn = np.array([s.category == "malignant" for s in scores])
        report["auc_malignant_vs_rest"] = float(roc_auc_score(yn, [s.score for s in scores]))
    return report


def run(args: argparse.Namespace) -> int:
    report, scores = evaluate_images(args.data, Path(args.src), Path(args.models_dir).resolve(), args.include_normal,
                                     args.out_of_fold, args.limit, args.device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    with open(out.with_name(out.stem + "-images.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "category", "score", "findings", "best_iou"])
        for s in scores:
            writer.writerow([s.name, s.category, f"{s.score:.4f}", s.findings, f"{s.best_iou:.3f}"])
    print(json.dumps(report, indent=2))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("evaluate-images", help="image-level evaluation of the automatic pipeline",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=sorted(READERS), required=True)
    parser.add_argument("src", help="dataset folder (BUSI layout, or mini-MIAS with Info.txt)")
    parser.add_argument("--out", required=True, help="report JSON (a per-image CSV is written beside it)")
    parser.add_argument("--models-dir", default=str(Path(load_config().models_dir)))
    parser.add_argument("--include-normal", action="store_true")
    parser.add_argument("--out-of-fold", action="store_true", help="use the fold models that did not see each image")
    parser.add_argument("--limit", type=int, help="evaluate an evenly spread subset of this many images")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(func=run)
