"""`branet evaluate-images`: the whole automatic pipeline on whole images, scored the way a user meets it.

Each image (a BUSI US frame or a mini-MIAS film) goes through the detector -> segmenter -> ROI -> classifier path with
no box given; its score is the highest p(malignant) over its findings (0 when nothing is found). Reported: image-level
ROC AUC benign vs malignant (and lesion vs normal when normal images are included), sensitivity/specificity at the
classifier's threshold, and how often a finding overlaps a true lesion (box IoU >= 0.5 / 0.3).

`--out-of-fold` makes the figures honest on the development data: every image is analysed by the detector fold member
and the classifier fold model that did not see it in training (fold assignments are recomputed exactly as training
made them). Without it the shipped models are used, which on their own training data is optimistic.

Several sites: `--data busi SRC --data bus-uclm SRC2` reports all images and each site (`by_site`). A site is
"never seen" by a model that did not train on it: `--classifier var/train/X/without-bus-uclm` (a leave-one-site-out
model of `branet train --validate-by site`) with the shipped BUSI-only detector scores BUS-UCLM as a new hospital.
Normal frames (`--include-normal`): how often they get a finding and are called malignant, for a sweep of
`best_proposal_min_score` (each image's best candidate is kept during the run, the floors are replayed after).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import re
from collections.abc import Sequence
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
    score: float            # highest p(malignant) over the image's findings (0 without a finding)
    findings: int
    best_iou: float
    site: str = ""
    best_proposal: float = 0.0   # detector confidence of the best finding (0 without a finding)


def breast_image(case: Case, modality: str) -> BreastImage:
    """A dataset image as the pipeline sees an ingested one (the breast mask on mammograms, as ingest makes it)."""
    pixels = case.pixels().astype(np.float32)
    h, w = pixels.shape
    header = pydicom.Dataset()
    header.SOPInstanceUID = header.StudyInstanceUID = "2.25.0"
    return BreastImage(dataset=header, pixels=pixels, modality=modality, frame_number=None, frame_shape=(h, w),
                       region=(0, 0, w, h), breast_mask=detection_region(pixels, modality, case.tags.get("view")),
                       source=case.name)


def roi_key(name: str) -> str:
    """'benign/benign (106)-1.png' or 'mdb028' -> the source image key shared by ROIs and cases."""
    stem = Path(name).name
    stem = stem[:-4] if stem.endswith(".png") else stem
    return re.sub(r"-\d+$", "", stem) if name.endswith(".png") else stem


class OutOfFoldModels:
    """For each case, the detector member and classifier fold model (with its fold's feature head) that did not
    train on it. Images a model never trained on (another site, normal frames for the classifier) get the shipped
    model, which has not seen them either."""

    def __init__(self, models_dir: Path, modality: str, cases_by_dataset: dict[str, list[Case]], device: str,
                 classifier_dir: Path | None = None) -> None:
        from branet_pacs.models.classifier import MalignancyClassifier, load_classifier_networks
        from branet_pacs.models.feature_head import FeatureHead
        from branet_pacs.models.runtime import select_device

        torch_device = select_device(device)
        self.shipped_detector, self.detector_of = out_of_fold_detectors(models_dir, modality, cases_by_dataset,
                                                                        torch_device)

        if classifier_dir is not None:
            from branet_pacs.evaluation.rois import load_model
            self.shipped_classifier = load_model(classifier_dir, device)
            checkpoints = Path(classifier_dir) / "checkpoints"
        else:
            self.shipped_classifier = MalignancyClassifier.load(models_dir, modality, device=device)
            checkpoints = models_dir / self.shipped_classifier.name / "checkpoints"
        self.classifier_of: dict[str, object] = {}
        folds = sorted(checkpoints.glob("fold*/done.json"))
        if not folds:
            raise SystemExit(f"no fold checkpoints under {checkpoints}: train with `branet train` first")
        for done in folds:
            val_files = json.loads(done.read_text())["val_files"]
            nets = [n.to(torch_device) for n in load_classifier_networks(done.parent / "best.safetensors")]
            head_file = done.parent / "feature_head.safetensors"
            if self.shipped_classifier.feature_head is not None and not head_file.is_file():
                raise SystemExit(f"{head_file} is missing: the fold's feature head is needed to go out of fold")
            head = FeatureHead.load(head_file) if self.shipped_classifier.feature_head is not None else None
            classifier = MalignancyClassifier(self.shipped_classifier.entry, nets, torch_device, head)
            for file in val_files:
                self.classifier_of[roi_key(file)] = classifier

    def configure(self, analyzer: Analyzer, case: Case, modality: str) -> None:
        analyzer.use("detector", modality, self.detector_of.get(case_key(case), self.shipped_detector))
        analyzer.use("classifier", modality, self.classifier_of.get(roi_key(case.name), self.shipped_classifier))


def out_of_fold_detectors(models_dir: Path, modality: str, cases_by_dataset: dict[str, list[Case]],
                          torch_device) -> tuple[object, dict[str, object]]:
    """The shipped detector and, keyed by `case_key`, the detector member that did not train on each of its training
    cases (the detector's folds recomputed from its metrics.json). Cases of other datasets are not keyed."""
    from branet_pacs.models.detector import HeatmapEnsemble, LesionDetector

    entry = find_model(models_dir, "detector", modality)
    shipped = LesionDetector.from_weights(verified_weights_path(models_dir, entry), name=entry.name,
                                          version=entry.version, modality=modality, device=torch_device)
    metrics = json.loads((models_dir / entry.name / "metrics.json").read_text())
    cv = metrics["cross_validation"]
    members = list(shipped.net.members)
    if len(members) != cv["folds"]:
        raise SystemExit(f"{entry.name}: {len(members)} members but {cv['folds']} folds; cannot go out of fold")
    trained_on = str(metrics["dataset"]).split("+")
    missing = [d for d in trained_on if d not in cases_by_dataset]
    detector_of: dict[str, object] = {}
    if missing and any(d in cases_by_dataset for d in trained_on):
        raise SystemExit(f"{entry.name} was trained on {'+'.join(trained_on)}: give every one of them with --data "
                         f"to repeat its folds (missing {', '.join(missing)})")
    if not missing:
        # repeat the detector's split: grouped since 2.0; 1.0.0 grouped MIAS by patient and split BUSI by image
        cases = [c for d in trained_on for c in cases_by_dataset[d]]
        grouped = cv.get("grouped", cv.get("grouped_by_patient", False))
        splits = make_folds([c.category for c in cases], [c.group for c in cases] if grouped else None,
                            cv["folds"], cv.get("seed", 0))
        for fold, (_, val) in enumerate(splits):
            detector = LesionDetector(net=HeatmapEnsemble([members[fold]]), spec=shipped.spec, name=entry.name,
                                      version=f"{entry.version}-fold{fold}", modality=modality, device=torch_device)
            for index in val:
                detector_of[case_key(cases[index])] = detector
    return shipped, detector_of


def case_key(case: Case) -> str:
    return f"{case.site}:{case.name}"


def read_cases(datasets: Sequence[tuple[str, Path]]) -> dict[str, list[Case]]:
    """The complete cases (the images the detector trains on) of each dataset, tagged with their site."""
    cases = {}
    for name, src in datasets:
        if name in cases:
            raise SystemExit(f"--data {name} given twice")
        cases[name] = [dataclasses.replace(c, site=c.site or name) for c in read_dataset(name, src) if c.complete]
    return cases


def evaluate_images(datasets: Sequence[tuple[str, Path]], models_dir: Path, include_normal: bool, out_of_fold: bool,
                    limit: int | None = None, device: str = "auto", classifier_dir: Path | None = None,
                    detector_dir: Path | None = None) -> tuple[dict, list[ImageScore]]:
    modalities = {modality_of(name) for name, _ in datasets}
    if len(modalities) != 1:
        raise SystemExit(f"--data: datasets of one modality at a time, got {sorted(modalities)}")
    modality = modalities.pop()
    cases_by_dataset = read_cases(datasets)
    # every image keeps its best candidate whatever its confidence, so that summarise() can replay any floor
    segmentation = dataclasses.replace(load_config().segmentation, best_proposal_min_score=0.0)
    config = dataclasses.replace(load_config(), models_dir=str(models_dir), segmentation=segmentation)
    analyzer = Analyzer(config)
    oof = OutOfFoldModels(models_dir, modality, cases_by_dataset, device, classifier_dir) if out_of_fold else None
    if oof is None and (classifier_dir or detector_dir):
        from branet_pacs.evaluation.rois import load_model
        from branet_pacs.models.detector import LesionDetector
        if classifier_dir:
            analyzer.use("classifier", modality, load_model(classifier_dir, device))
        if detector_dir:
            analyzer.use("detector", modality, LesionDetector.load(Path(detector_dir).parent, modality, device,
                                                                   name=Path(detector_dir).name))
    elif oof is not None and detector_dir:
        raise SystemExit("--detector with --out-of-fold: the fold members of the manifest's detector are used")
    chosen = [c for cases in cases_by_dataset.values() for c in cases if include_normal or c.category != "normal"]
    if limit:
        chosen = chosen[:: max(1, len(chosen) // limit)][:limit]
    scores: list[ImageScore] = []
    for case in tqdm(chosen, desc=f"evaluate {'+'.join(cases_by_dataset)}", unit="image", mininterval=10):
        if oof:
            oof.configure(analyzer, case, modality)
        findings = analyzer.find_lesions(breast_image(case, modality))
        truth = [mask_box(lesion.mask) for lesion in case.lesions]
        best_iou = max((box_iou(f.box, t) for f in findings for t in truth if t), default=0.0)
        scores.append(ImageScore(case.name, case.category, max((f.p_malignant for f in findings), default=0.0),
                                 len(findings), best_iou, case.site,
                                 max((f.proposal_score for f in findings), default=0.0)))
    threshold = analyzer.classifier(modality).threshold
    report = summarise(scores, modality, out_of_fold, threshold)
    report["classifier"] = f"{analyzer.classifier(modality).name} {analyzer.classifier(modality).version}"
    report["detector"] = f"{analyzer.detector(modality).name} {analyzer.detector(modality).version}"
    report["best_proposal_min_score"] = load_config().segmentation.best_proposal_min_score
    if len(cases_by_dataset) > 1:
        report["by_site"] = {site: summarise([s for s in scores if s.site == site], modality, out_of_fold, threshold)
                             for site in cases_by_dataset}
    return report, scores


def at_floor(scores: Sequence[ImageScore], floor: float) -> list[ImageScore]:
    """The scores as the pipeline reports them with `best_proposal_min_score = floor`: a best candidate below it is
    no finding (US reports one finding per image, so the best candidate is the only one)."""
    return [s if s.best_proposal >= floor else dataclasses.replace(s, score=0.0, findings=0, best_iou=0.0,
                                                                  best_proposal=0.0)
            for s in scores]


FLOOR_SWEEP = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


def summarise(scores: Sequence[ImageScore], modality: str, out_of_fold: bool, threshold: float) -> dict:
    """The figures at the configured `best_proposal_min_score` and, where the modality reports its best candidate,
    at other floors: how often a normal frame gets a finding / is called malignant against the lesions' AUC."""
    segmentation = load_config().segmentation
    if not segmentation.reports_best_proposal(modality):
        return {"modality": modality, "out_of_fold": out_of_fold, **_summary(scores, threshold)}
    configured = segmentation.best_proposal_min_score
    report = {"modality": modality, "out_of_fold": out_of_fold, **_summary(at_floor(scores, configured), threshold)}
    if scores:
        report["by_best_proposal_min_score"] = [{"floor": f, **_summary(at_floor(scores, f), threshold, brief=True)}
                                                for f in sorted(set(FLOOR_SWEEP) | {configured})]
    return report


def _summary(scores: Sequence[ImageScore], threshold: float, brief: bool = False) -> dict:
    lesion = [s for s in scores if s.category in ("benign", "malignant")]
    y = np.array([s.category == "malignant" for s in lesion], dtype=bool)
    p = np.array([s.score for s in lesion])
    normal = [s for s in scores if s.category == "normal"]
    report = {
        "images": len(scores), "benign": int((~y).sum()), "malignant": int(y.sum()), "normal": len(normal),
        "auc_benign_vs_malignant": float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None,
        "threshold": threshold,
        "sensitivity": float((p[y] >= threshold).mean()) if y.any() else None,
        "specificity": float((p[~y] < threshold).mean()) if (~y).any() else None,
        "lesion_images_with_finding": float(np.mean([s.findings > 0 for s in lesion])) if lesion else None,
        "lesion_hit_rate_iou50": float(np.mean([s.best_iou >= 0.5 for s in lesion])) if lesion else None,
    }
    if not brief:
        report["lesion_hit_rate_iou30"] = float(np.mean([s.best_iou >= 0.3 for s in lesion])) if lesion else None
    if normal:
        report["normal_images_with_finding"] = float(np.mean([s.findings > 0 for s in normal]))
        report["normal_images_called_malignant"] = float(np.mean([s.score >= threshold for s in normal]))
        yn = np.array([s.category == "malignant" for s in scores])
        if 0 < yn.sum() < len(yn):
            report["auc_malignant_vs_rest"] = float(roc_auc_score(yn, [s.score for s in scores]))
    return report


def run(args: argparse.Namespace) -> int:
    datasets = [(name.lower(), Path(src)) for name, src in args.data]
    for name, _ in datasets:
        if name not in READERS:
            raise SystemExit(f"--data: unknown dataset '{name}' (known: {', '.join(sorted(READERS))})")
    report, scores = evaluate_images(datasets, Path(args.models_dir).resolve(), args.include_normal,
                                     args.out_of_fold, args.limit, args.device,
                                     Path(args.classifier) if args.classifier else None,
                                     Path(args.detector) if args.detector else None)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    with open(out.with_name(out.stem + "-images.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["site", "image", "category", "score", "findings", "best_iou", "best_proposal"])
        for s in scores:
            writer.writerow([s.site, s.name, s.category, f"{s.score:.4f}", s.findings, f"{s.best_iou:.3f}",
                             f"{s.best_proposal:.4f}"])
    print(json.dumps({k: v for k, v in report.items() if k != "by_best_proposal_min_score"}, indent=2))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("evaluate-images", help="image-level evaluation of the automatic pipeline",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs=2, action="append", metavar=("DATASET", "SRC"), required=True,
                        help=f"a dataset and its folder ({', '.join(sorted(READERS))}); repeat it for several sites")
    parser.add_argument("--out", required=True, help="report JSON (a per-image CSV is written beside it)")
    parser.add_argument("--models-dir", default=str(Path(load_config().models_dir)))
    parser.add_argument("--include-normal", action="store_true")
    parser.add_argument("--out-of-fold", action="store_true", help="use the fold models that did not see each image")
    parser.add_argument("--limit", type=int, help="evaluate an evenly spread subset of this many images")
    parser.add_argument("--classifier", default=None,
                        help="classifier model folder to use instead of the manifest's (registered in its parent's "
                             "manifest.json), e.g. a leave-one-site-out model var/train/X/without-bus-uclm")
    parser.add_argument("--detector", default=None,
                        help="detector model folder to use instead of the manifest's, e.g. a leave-one-site-out "
                             "detector var/train/X/without-busi of `branet train-detector --validate-by site`")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(func=run)
