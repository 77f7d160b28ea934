"""ingest -> propose -> segment -> ROI -> classify -> encode: the one unit of work every entry point runs.

`Analyzer.analyze_instance(source)` takes one instance (a file path, the bytes of a file, or a pydicom Dataset) and
returns an `InstanceResult`: the ingest decision, per image the findings with their SEG + SR, and per image what
failed. `branet analyze`, the Orthanc worker and re-analysis all call it; `branet_pacs.outputs` writes the objects.

Automatic path (no box given): the modality's lesion detector proposes boxes on the whole image, the segmenter
turns each box into a mask, and the mask's bounding box is cut into the classifier's ROI — the same box rule
`branet prepare` uses on ground-truth masks, so training and inference see the same kind of ROI. A classifier trained
on annotated boxes instead of traced outlines (CBIS-DDSM) reads the prompt's box (`classifier_view`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from branet_pacs.config import Config
from branet_pacs.dicom.cad_sr import build_mammography_cad_sr
from branet_pacs.dicom.ingest import Source, ingest
from branet_pacs.dicom.seg import build_seg
from branet_pacs.dicom.sr import build_sr
from branet_pacs.imaging.geometry import box_ellipse_mask, box_iou, box_mask, mask_box, mask_outline
from branet_pacs.models.errors import ModelUnavailable
from branet_pacs.models.feature_head import lesion_feature_rows
from branet_pacs.types import (
    Box,
    BreastImage,
    Finding,
    ImageFailure,
    ImageResult,
    IngestOutcome,
    InstanceResult,
    ModelIdentity,
)

log = logging.getLogger(__name__)

DUPLICATE_MASK_IOU = 0.5   # two proposals whose masks overlap this much are one lesion
DUPLICATE_BOX_IOU = 0.7
MODALITIES = ("US", "MG")


class BoxOutsideImage(ValueError):
    """A user-given lesion box does not overlap the image it was given for."""


@dataclass(frozen=True)
class Prompt:
    box: Box           # in BreastImage.pixels coordinates
    score: float
    kind: str          # "auto" | "box"


def settings_fingerprint(config: Config) -> str:
    """What, besides the models, decides the outputs: the ingest, segmentation and output settings (not the UID
    root, which is part of every UID anyway)."""
    output = {k: v for k, v in asdict(config.output).items() if k != "uid_root"}
    text = repr((config.ingest, config.segmentation, sorted(output.items())))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Analyzer:
    """Holds loaded models; safe to reuse for many images in one process (not thread-safe)."""

    config: Config
    _cache: dict[tuple[str, str], object] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        from branet_pacs.models.runtime import configure_torch
        configure_torch(self.config.threads)
        self._settings = settings_fingerprint(self.config)

    # --- models, loaded once -------------------------------------------------------------------------------------
    def _load(self, key: tuple[str, str], loader):
        if key not in self._cache:
            try:
                self._cache[key] = loader()
            except ModelUnavailable as exc:
                self._cache[key] = exc
        value = self._cache[key]
        if isinstance(value, ModelUnavailable):
            raise value
        return value

    @property
    def engine(self):
        """The inference engine every model of this analyzer runs on (config `engine`, `threads`, `engine_cache`)."""
        from branet_pacs.models.runtime import Engine, available_cores
        return Engine(self.config.engine, self.config.threads or available_cores(), self.config.engine_cache)

    def segmenter(self):
        from branet_pacs.models.segmenter import make_segmenter
        return self._load(("segmenter", ""), lambda: make_segmenter(self.config.segmentation, self.config.device,
                                                                     self.engine))

    def lesion_encoder(self):
        """LiteMedSAM, whose image embedding the classifier's feature head reads: the segmenter itself when it is
        LiteMedSAM (one encoder pass per image), else loaded beside it."""
        from branet_pacs.models.segmenter import LiteMedSAMSegmenter
        segmenter = self.segmenter()
        if isinstance(segmenter, LiteMedSAMSegmenter):
            return segmenter
        return self._load(("lesion-encoder", ""), lambda: LiteMedSAMSegmenter(self.config.device, self.engine))

    def classifier(self, modality: str):
        from branet_pacs.models.classifier import MalignancyClassifier
        return self._load(("classifier", modality), lambda: MalignancyClassifier.load(
            self.config.models_dir, modality, device=self.config.device, engine=self.engine))

    def detector(self, modality: str):
        from branet_pacs.models.detector import LesionDetector
        return self._load(("detector", modality), lambda: LesionDetector.load(
            self.config.models_dir, modality, device=self.config.device, engine=self.engine))

    def use(self, kind: str, modality: str, model: object) -> None:
        """Run with a given model object instead of the manifest's (evaluation with fold models, tests)."""
        self._cache[(kind, modality)] = model

    def warm_up(self) -> list[str]:
        """Load every model now, so the first image does not pay for it; returns what is unavailable."""
        missing = []
        loaders = [("segmenter", self.segmenter)]
        for modality in MODALITIES:
            loaders += [(f"{modality} classifier", lambda m=modality: self.classifier(m)),
                        (f"{modality} detector", lambda m=modality: self.detector(m))]
        for what, load in loaders:
            try:
                load()
            except ModelUnavailable as exc:
                missing.append(f"{what}: {exc}")
        return missing

    def model_identity(self, modality: str, automatic: bool) -> ModelIdentity:
        """Which models (and settings) analyse `modality`: written into, and part of the UIDs of, every output."""
        classifier = self.classifier(modality)
        detector = self.detector(modality) if automatic else None
        return ModelIdentity(
            classifier_name=classifier.name, classifier_version=classifier.version, threshold=classifier.threshold,
            segmenter_name=self.segmenter().name, detector_name=detector.name if detector else None,
            detector_version=detector.version if detector else None,
            weights_sha256=(*classifier.weights_sha256, *((getattr(detector, "sha256", ""),) if detector else ())),
            settings=self._settings)

    def roi_margin(self, modality: str) -> float:
        """The ROI context margin: the one the classifier was trained with, else the configured one."""
        trained = self.classifier(modality).roi_margin
        return trained if trained is not None else self.config.segmentation.roi_margin

    # --- the unit of work -----------------------------------------------------------------------------------------
    def analyze_instance(self, source: Source, boxes: Sequence[Box] | None = None,
                         name: str | None = None) -> InstanceResult:
        """Ingest one instance and analyse each of its breast images; a failing image is recorded, the others
        still run. Never raises for bad input: the result's status and reason say what happened."""
        outcome = ingest(source, self.config.ingest, name)
        return self.analyze_ingested(outcome, boxes)

    def analyze_ingested(self, outcome: IngestOutcome, boxes: Sequence[Box] | None = None) -> InstanceResult:
        results: list[ImageResult] = []
        failures: list[ImageFailure] = []
        for image in outcome.images:
            try:
                results.append(self.analyze_image(image, boxes))
            except ModelUnavailable as exc:
                failures.append(ImageFailure(image, f"model unavailable: {exc}"))
            except BoxOutsideImage as exc:
                failures.append(ImageFailure(image, f"box error: {exc}"))
            except Exception as exc:  # noqa: BLE001 - one bad image must not stop the others; the reason is kept
                log.warning("analysis failed for SOP %s: %s: %s", image.sop_instance_uid, type(exc).__name__, exc)
                log.debug("analysis failure of SOP %s", image.sop_instance_uid, exc_info=True)
                failures.append(ImageFailure(image, f"analysis failed: {type(exc).__name__}: {exc}"))
        return InstanceResult(ingest=outcome, images=tuple(results), failures=tuple(failures))

    def analyze_image(self, image: BreastImage, boxes: Sequence[Box] | None = None) -> ImageResult:
        """Find, segment and classify lesions on one image and encode SEG (when any finding) + SR."""
        timings: dict[str, float] = {}
        start = time.perf_counter()
        models = self.model_identity(image.modality, automatic=not boxes)  # fails early when weights are missing
        timings["load"] = time.perf_counter() - start
        findings = self.find_lesions(image, boxes, timings)
        start = time.perf_counter()
        settings = self.config.output
        seg = build_seg(image, findings, models, settings) if findings else None
        sr = build_sr(image, findings, models, seg, settings)
        cad_sr = (build_mammography_cad_sr(image, findings, models, settings)
                  if settings.mammography_cad_sr and image.modality == "MG" else None)
        timings["encode"] = time.perf_counter() - start
        log.info("analysed SOP %s frame %s: %d finding(s)", image.sop_instance_uid, image.frame_number, len(findings))
        return ImageResult(image=image, findings=findings, models=models, seg=seg, sr=sr, timings=timings,
                           cad_sr=cad_sr)

    def find_lesions(self, image: BreastImage, boxes: Sequence[Box] | None = None,
                     timings: dict[str, float] | None = None) -> tuple[Finding, ...]:
        """Propose (or take the given boxes), segment, cut ROIs and classify: the findings, no DICOM encoding."""
        timings = {} if timings is None else timings
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = timings.get(stage, 0.0) + now - clock
            clock = now

        classifier = self.classifier(image.modality)       # fails early when weights are missing
        prompts = self.prompts(image, boxes)
        if boxes and not prompts:
            raise BoxOutsideImage(f"every given box lies outside the analysed image region {image.region} "
                                  f"(x0, y0, x1, y1 of the {image.frame_shape[1]}x{image.frame_shape[0]} frame)")
        lap("propose")
        boxes = [p.box for p in prompts]
        segmenter, encoder, embedding = self.segmenter(), None, None
        if boxes and classifier.feature_head is not None:   # the head reads LiteMedSAM's embedding of the image
            encoder = self.lesion_encoder()
            embedding = encoder.embed(image.pixels)
            masks = encoder.decode(embedding, boxes) if segmenter is encoder else segmenter.segment(image.pixels, boxes)
        else:
            masks = segmenter.segment(image.pixels, boxes) if boxes else []
        lap("segment")
        kept = distinct_lesions(image, prompts, masks)
        read = classifier_view(classifier.lesion_box, image, kept)
        margin = self.roi_margin(image.modality)
        features = None
        if encoder is not None and embedding is not None and kept:
            features = lesion_feature_rows(classifier.head_inputs, image.pixels, encoder, embedding,
                                           [mask for mask, _ in read], [box for _, box in read])
        probabilities = classifier.predict_boxes(image.pixels, [box for _, box in read], margin, features)
        lap("classify")
        return tuple(
            _finding(index, image, prompt, mask, roi_box, float(p), classifier.label(float(p)), margin)
            for index, ((prompt, mask, _), (_, roi_box), p) in enumerate(zip(kept, read, probabilities), start=1))

    def prompts(self, image: BreastImage, boxes: Sequence[Box] | None) -> list[Prompt]:
        """User boxes (source-frame coordinates) mapped into the image, or the detector's proposals."""
        if boxes:
            return [Prompt(box, 1.0, "box") for box in (_frame_to_image(b, image) for b in boxes) if box]
        settings = self.config.segmentation
        report_best = settings.reports_best_proposal(image.modality)
        min_score = settings.min_proposal_score_for(image.modality)
        floor = settings.best_proposal_min_score if report_best else min_score
        proposals = self.detector(image.modality).propose(
            image.pixels, valid_mask=image.breast_mask, max_proposals=settings.max_findings_for(image.modality),
            min_score=floor)
        # Best first: the best is kept whatever its score (report_best_proposal), the others need min_proposal_score.
        return [Prompt(p.box, float(p.score), "auto") for rank, p in enumerate(proposals)
                if rank == 0 or p.score >= min_score]


def _frame_to_image(box: Box, image: BreastImage) -> Box | None:
    """A source-frame box clipped to the analysed region and shifted into `image.pixels` coordinates."""
    rx0, ry0, rx1, ry1 = image.region
    x0, y0, x1, y1 = max(box[0], rx0), max(box[1], ry0), min(box[2], rx1), min(box[3], ry1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return x0 - rx0, y0 - ry0, x1 - rx0, y1 - ry0


def distinct_lesions(image: BreastImage, prompts: Sequence[Prompt],
                      masks: Sequence[np.ndarray]) -> list[tuple[Prompt, np.ndarray, Box]]:
    """Pair prompts with usable masks, dropping masks that duplicate a better-scored one.

    A mask is clipped to the breast (MG); when the segmenter returns nothing inside the box, the box itself is the
    mask, so a user-drawn box always yields a finding.
    """
    kept: list[tuple[Prompt, np.ndarray, Box]] = []
    for prompt, mask in sorted(zip(prompts, masks), key=lambda pm: -pm[0].score):
        mask = mask.astype(bool)
        if image.breast_mask is not None:
            mask &= image.breast_mask
        box = mask_box(mask)
        if box is None:
            mask, box = box_mask(image.pixels.shape, prompt.box), prompt.box
        if any(_mask_iou(mask, other) > DUPLICATE_MASK_IOU or box_iou(box, other_box) > DUPLICATE_BOX_IOU
               for _, other, other_box in kept):
            continue
        kept.append((prompt, mask, box))
    return kept


def classifier_view(lesion_box: str, image: BreastImage,
                    kept: Sequence[tuple[Prompt, np.ndarray, Box]]) -> list[tuple[np.ndarray, Box]]:
    """The mask and box the classifier reads of each finding: the segmenter's mask and its box, or, for a classifier
    trained on annotated boxes (`lesion_box` "prompt", e.g. CBIS-DDSM), the prompt's box with its inscribed ellipse
    as the mask — how its training ROIs and features were cut, and what the detector learned to draw. The SEG and
    SR still carry the segmenter's mask."""
    if lesion_box == "prompt":
        return [(box_ellipse_mask(image.pixels.shape, prompt.box), prompt.box) for prompt, _, _ in kept]
    return [(mask, box) for _, mask, box in kept]


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _finding(index: int, image: BreastImage, prompt: Prompt, mask: np.ndarray, roi_box: Box, p_malignant: float,
             label: str, roi_margin: float) -> Finding:
    """Place an image-space mask and ROI box into the source frame and describe them there."""
    rx0, ry0, _, _ = image.region
    frame_mask = np.zeros(image.frame_shape, dtype=bool)
    h, w = mask.shape
    frame_mask[ry0:ry0 + h, rx0:rx0 + w] = mask
    box = mask_box(frame_mask)
    assert box is not None
    return Finding(index=index, box=box, mask=frame_mask, outline=mask_outline(frame_mask), p_malignant=p_malignant,
                   label=label, roi_margin=roi_margin, proposal_score=prompt.score, prompt=prompt.kind,
                   roi_box=(roi_box[0] + rx0, roi_box[1] + ry0, roi_box[2] + rx0, roi_box[3] + ry0))
