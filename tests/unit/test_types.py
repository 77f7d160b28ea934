"""The shared vocabulary: instance results, the one study verdict, model identity."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pydicom

from branet_pacs.types import (
    BreastImage,
    BreastResult,
    ImageFailure,
    ImageResult,
    IngestOutcome,
    InstanceResult,
    InstanceSummary,
    ModelIdentity,
    Status,
    StudyState,
    breast_results,
    study_verdict,
)

MODELS = ModelIdentity("us-resnet18", "1.1.0", 0.41, "LiteMedSAM", "us-lesion-detector", "1.0.0", ("a" * 64,), "s1")


def _image(frame: int | None = None) -> BreastImage:
    header = pydicom.Dataset()
    header.SOPInstanceUID, header.StudyInstanceUID, header.Modality = "1.2.3", "1.2", "US"
    return BreastImage(dataset=header, pixels=np.zeros((4, 4), np.float32), modality="US", frame_number=frame,
                       frame_shape=(4, 4), region=(0, 0, 4, 4))


def test_one_bad_instance_never_hides_the_analysed_ones():
    ok = InstanceSummary("1.1", Status.OK, findings=2, model_version="us-resnet18 1.1.0")
    bad = InstanceSummary("1.2", Status.ERROR, "cannot decode pixel data")
    ct = InstanceSummary("1.3", Status.SKIPPED, "Modality 'CT' is not analysed")
    verdict = study_verdict([ok, bad, ct])
    assert verdict.state is StudyState.ANALYSED and verdict.model_version == "us-resnet18 1.1.0"
    assert "1 image instance(s) analysed, 2 finding(s)" in verdict.reason
    assert "SOP 1.2: cannot decode pixel data" in verdict.reason and "1 instance(s) skipped" in verdict.reason
    assert study_verdict([bad, ct]).state is StudyState.ERROR
    assert study_verdict([ct]).state is StudyState.SKIPPED
    empty = study_verdict([])
    assert empty.state is StudyState.SKIPPED and "no instances" in empty.reason
    partial = study_verdict([replace(ok, reason="frame 3: analysis failed: boom")])
    assert partial.state is StudyState.ANALYSED and "partial: SOP 1.1: frame 3" in partial.reason


def test_instance_result_status_reason_and_summary():
    image = _image()
    analysed = ImageResult(image, (), MODELS)
    header = image.dataset
    ok = InstanceResult(IngestOutcome("f", Status.OK, images=(image, image), dataset=header), (analysed,),
                        (ImageFailure(image, "analysis failed: boom"),))
    assert ok.status is Status.OK and ok.reason == "analysis failed: boom"
    summary = ok.summary()
    assert (summary.sop_instance_uid, summary.findings, summary.model_version) == ("1.2.3", 0, "us-resnet18 1.1.0")
    failed = InstanceResult(IngestOutcome("f", Status.OK, images=(image,), dataset=header), (),
                            (ImageFailure(image, "model unavailable: none"),))
    assert failed.status is Status.ERROR and failed.reason == "model unavailable: none"
    skipped = InstanceResult(IngestOutcome("f", Status.SKIPPED, "not a breast image", dataset=header))
    assert (skipped.status, skipped.reason, skipped.modality) == (Status.SKIPPED, "not a breast image", "US")
    unreadable = InstanceResult(IngestOutcome("f", Status.ERROR, "f: not a DICOM file"))
    assert unreadable.sop_instance_uid == "" and unreadable.outputs == ()


def test_model_identity_fingerprint_covers_weights_and_settings():
    assert MODELS.software_version == "us-resnet18 1.1.0" and MODELS.algorithm_version == "1.1.0"
    assert MODELS.fingerprint == replace(MODELS).fingerprint
    for changed in (replace(MODELS, weights_sha256=("b" * 64,)), replace(MODELS, settings="s2"),
                    replace(MODELS, detector_version="2.0.0"), replace(MODELS, threshold=0.5)):
        assert changed.fingerprint != MODELS.fingerprint


def test_breast_results_take_the_most_suspicious_view_of_each_breast():
    views = [
        ("S1", "MG", "L", [("benign", 0.20), ("malignant", 0.70)]),   # left CC: two findings
        ("S1", "MG", "L", [("benign", 0.30)]),                        # left MLO
        ("S1", "MG", "R", []),                                        # right CC: nothing found
        ("S1", "MG", "R", [("benign", 0.10)]),                        # right MLO
        ("S1", "US", None, [("benign", 0.40)]),                       # US without laterality: its own breast
        ("S0", "MG", "L", []),
    ]
    breasts = breast_results(views)
    assert [(b.study_instance_uid, b.modality, b.laterality) for b in breasts] == [
        ("S0", "MG", "L"), ("S1", "MG", "L"), ("S1", "MG", "R"), ("S1", "US", "")]
    s0, left, right, us = breasts
    assert (s0.images, s0.findings, s0.p_malignant, s0.label) == (1, 0, None, "")
    assert (left.images, left.findings, left.p_malignant, left.label) == (2, 3, 0.70, "malignant")
    assert (right.images, right.findings, right.p_malignant, right.label) == (2, 1, 0.10, "benign")
    assert us.as_csv_row() == {"study_instance_uid": "S1", "modality": "US", "laterality": "", "images": "1",
                               "findings": "1", "p_malignant": "0.4000", "label": "benign"}
    assert s0.as_json()["p_malignant"] is None and tuple(s0.as_json()) == BreastResult.CSV_COLUMNS
