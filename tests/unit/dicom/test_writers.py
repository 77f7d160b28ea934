"""SEG and TID 1500 SR writers: values round-trip through highdicom, and the real validators find them clean.

Sources come from tests/dicom_factory.py (written WITH pixel data, so dcentvfy can compare files); the writers get
the header without pixel data, as ingest hands it on. Cases: MG single-frame with laterality (2 findings), US
single-frame (1), US multi-frame with the finding on frame 3, a DX breast image without PatientOrientation /
Laterality / Type 2 patient-study attributes (2 findings), and an MG (right) without finding (SR only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

import branet_pacs
from branet_pacs.config import OutputSettings
from branet_pacs.dicom import codes
from branet_pacs.dicom.cad_sr import LIBRARY_ENTRY, build_mammography_cad_sr
from branet_pacs.dicom.seg import build_seg, pixel_spacing_mm, read_seg
from branet_pacs.dicom.sr import build_sr, call_text
from branet_pacs.imaging.geometry import mask_box, mask_outline
from branet_pacs.types import BreastImage, Finding, ModelIdentity

import dicom_factory as factory
import validators as validate

MODELS = ModelIdentity(classifier_name="resnet18-test", classifier_version="7.3.1-test", threshold=0.5,
                   segmenter_name="litemedsam", detector_name="detector-test", detector_version="2.0.0-test")
SETTINGS = OutputSettings(series_description_prefix="BraNet RESEARCH USE ONLY", seg_series_number=9801,
                          sr_series_number=9802)
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"


def ellipse_finding(index: int, shape: tuple[int, int], centre: tuple[float, float], radii: tuple[float, float],
                    p_malignant: float, seed: int = 0) -> Finding:
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    mask = ((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2 <= 1.0
    return Finding(index=index, box=mask_box(mask), mask=mask, outline=mask_outline(mask),
                   p_malignant=p_malignant, label="malignant" if p_malignant >= 0.5 else "benign",
                   proposal_score=0.25 + 0.5 * p_malignant)


def at_lesion(ds: pydicom.Dataset, index: int, p: float) -> Finding:
    x0, y0, x1, y1 = factory.lesion_box(ds)
    return ellipse_finding(index, (ds.Rows, ds.Columns), ((y0 + y1) / 2, (x0 + x1) / 2),
                           (max((y1 - y0) / 2, 3), max((x1 - x0) / 2, 3)), p, seed=index)


def header(ds: pydicom.Dataset) -> pydicom.Dataset:
    out = factory.fresh_copy(ds)
    del out.PixelData
    return out


def breast_image(ds: pydicom.Dataset, modality: str, frame: int | None, side: str | None) -> BreastImage:
    shape = (int(ds.Rows), int(ds.Columns))
    return BreastImage(dataset=header(ds), pixels=np.zeros(shape, np.float32), modality=modality,
                       frame_number=frame, frame_shape=shape, region=(0, 0, shape[1], shape[0]), laterality=side)


@dataclass
class Case:
    name: str
    image: BreastImage
    findings: list[Finding]
    source_path: Path
    seg_path: Path | None
    sr_path: Path
    side: str | None              # laterality the outputs must carry
    procedure: str                # code value of Performed Procedure Code Sequence


def _sources() -> list[tuple[str, pydicom.Dataset, str, int | None, str | None, str | None, list]]:
    mg = factory.make_mg(rows=160, cols=128, laterality="L", seed=1)
    us = factory.make_us(rows=96, cols=128, seed=2)
    us_cine = factory.make_us(rows=96, cols=128, frames=5, seed=3)
    dx = factory.make_dx(rows=128, cols=112, seed=4, PatientOrientation=None, ImageLaterality=None, Laterality=None,
                         PatientBirthDate=None, PatientSex=None, AccessionNumber=None, StudyID=None,
                         ReferringPhysicianName=None)
    mg_right = factory.make_mg(rows=160, cols=128, laterality="R", seed=5)
    sc = factory.make_dx(modality="OT", rows=120, cols=100, seed=6, NumberOfFrames=1)   # single-frame SOP class
    shape = lambda ds: (int(ds.Rows), int(ds.Columns))  # noqa: E731
    return [
        # name, source, modality, frame, side given by ingest, side expected, findings
        ("mg-left", mg, "MG", None, "L", "L",
         [at_lesion(mg, 1, 0.91), ellipse_finding(2, shape(mg), (120, 30), (9, 14), 0.12, seed=2)]),
        ("us", us, "US", None, "R", "R", [at_lesion(us, 1, 0.37)]),     # ingest reads the header's Laterality
        ("us-cine-frame3", us_cine, "US", 3, "R", "R", [at_lesion(us_cine, 1, 0.66)]),
        ("dx-bare", dx, "MG", None, None, None,   # user-drawn boxes: no detector certainty
         [replace(ellipse_finding(1, shape(dx), (40, 40), (12, 10), 0.5), prompt="box", proposal_score=1.0),
          replace(ellipse_finding(2, shape(dx), (90, 70), (8, 16), 0.05), prompt="box", proposal_score=1.0)]),
        ("mg-right-none", mg_right, "MG", None, "R", "R", []),
        ("sc-one-frame", sc, "MG", None, "L", "L", [at_lesion(sc, 1, 0.4)]),
    ]


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    out = tmp_path_factory.mktemp("writers")
    result = {}
    for name, ds, modality, frame, side_in, side, findings in _sources():
        source_path = factory.write(ds, out / f"{name}-source.dcm")
        image = breast_image(ds, modality, frame, side_in)
        seg = build_seg(image, findings, MODELS, SETTINGS) if findings else None
        seg_path = None
        if seg is not None:
            seg_path = out / f"{name}-seg.dcm"
            seg.save_as(seg_path, enforce_file_format=True)
        sr = build_sr(image, findings, MODELS, seg, SETTINGS)
        sr_path = out / f"{name}-sr.dcm"
        sr.save_as(sr_path, enforce_file_format=True)
        procedure = codes.PROCEDURE_BREAST_US.value if modality == "US" else codes.PROCEDURE_MAMMOGRAM[side].value
        result[name] = Case(name, image, findings, source_path, seg_path, sr_path, side, procedure)
    return result


WITH_FINDINGS = ["mg-left", "us", "us-cine-frame3", "dx-bare", "sc-one-frame"]
ALL_CASES = WITH_FINDINGS + ["mg-right-none"]


def source_frames(case: Case) -> list[int] | None:
    return [3] if case.name == "us-cine-frame3" else None


# ------------------------------------------------------------------------------------------------ SEG round trip

@pytest.mark.parametrize("name", WITH_FINDINGS)
def test_seg_round_trip(cases: dict[str, Case], name: str) -> None:
    case = cases[name]
    src = case.image.dataset
    written = pydicom.dcmread(case.seg_path)
    # Shared Pixel Measures are there (OHIF reads the SEG's geometry from them) with the source's own spacing
    measures = written.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.get("PixelSpacing", [])] == (pixel_spacing_mm(src) or [])
    assert "SliceThickness" not in measures and "FrameOfReferenceUID" not in written
    seg = read_seg(written)               # highdicom's own reader refuses the item (see read_seg)
    assert seg.SOPClassUID == SEGMENTATION and seg.SegmentationType == "BINARY"
    n = len(case.findings)
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == list(range(1, n + 1))

    for finding, segment in zip(case.findings, seg.SegmentSequence):
        assert segment.SegmentLabel == f"Lesion {finding.index}"
        assert segment.TrackingID == f"Lesion {finding.index}"
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == codes.SEGMENT_CATEGORY.value
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.LESION.value
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == branet_pacs.ALGORITHM_NAME
        assert algorithm.AlgorithmVersion == MODELS.algorithm_version
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == codes.ALGORITHM_FAMILY.value
        region = segment.AnatomicRegionSequence[0]
        assert region.CodeValue == codes.BREAST.value
        modifiers = [m.CodeValue for m in region.get("AnatomicRegionModifierSequence", [])]
        assert modifiers == ([codes.LATERALITY[case.side].value] if case.side else [])

    # masks equal, on the analysed frame of the analysed instance
    if source_frames(case):
        pixels = seg.get_pixels_by_source_frame(source_sop_instance_uid=src.SOPInstanceUID,
                                                source_frame_numbers=source_frames(case))
    else:
        pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[src.SOPInstanceUID])
    assert pixels.shape == (1, src.Rows, src.Columns, n)
    for k, finding in enumerate(case.findings):
        np.testing.assert_array_equal(pixels[0, ..., k].astype(bool), finding.mask)

    # references to the source (class, instance, frame)
    for item in [*seg.SourceImageSequence,
                 *(d.SourceImageSequence[0] for fg in seg.PerFrameFunctionalGroupsSequence
                   for d in fg.DerivationImageSequence)]:
        assert item.ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert item.ReferencedSOPClassUID == src.SOPClassUID
        if source_frames(case):
            assert [int(item.ReferencedFrameNumber)] == source_frames(case)
        else:
            assert "ReferencedFrameNumber" not in item
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == src.SeriesInstanceUID
    assert "ReferencedFrameNumber" not in referenced.ReferencedInstanceSequence[0]

    # new series, who made it, patient and study copied
    assert seg.SeriesInstanceUID != src.SeriesInstanceUID
    assert int(seg.SeriesNumber) == SETTINGS.seg_series_number
    assert seg.SeriesDescription == _series_description("SEG", case)
    assert seg.Manufacturer == branet_pacs.MANUFACTURER and seg.ManufacturerModelName == "BraNet-PACS"
    versions = " ".join(seg.SoftwareVersions)
    assert branet_pacs.__version__ in versions and MODELS.classifier_version in versions
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyTime"):
        assert seg.get(keyword) == src.get(keyword), keyword
    assert "PatientOrientation" in seg and seg.PatientOrientation == src.get("PatientOrientation", "")


def test_seg_without_findings_or_with_bad_findings_is_refused(cases: dict[str, Case]) -> None:
    case = cases["mg-left"]
    with pytest.raises(ValueError, match="at least one finding"):
        build_seg(case.image, [], MODELS, SETTINGS)
    with pytest.raises(ValueError, match="1..1"):
        build_seg(case.image, [replace(case.findings[0], index=2)], MODELS, SETTINGS)
    small = ellipse_finding(1, (20, 20), (10, 10), (4, 4), 0.3)
    with pytest.raises(ValueError, match="mask shape"):
        build_seg(case.image, [small], MODELS, SETTINGS)
    cine = cases["us-cine-frame3"]
    with pytest.raises(ValueError, match="frame 6"):
        build_seg(replace(cine.image, frame_number=6), cine.findings, MODELS, SETTINGS)


def _uids(ds: pydicom.Dataset) -> set[str]:
    return {str(e.value) for e in ds.iterall() if e.VR == "UI" and e.value} | \
        {str(ds.file_meta.MediaStorageSOPInstanceUID)}


def test_output_uids_are_derived_from_source_frame_and_model(cases: dict[str, Case]) -> None:
    case = cases["mg-left"]
    first = build_seg(case.image, case.findings, MODELS, SETTINGS)
    again = build_seg(case.image, case.findings, MODELS, SETTINGS)
    assert _uids(first) == _uids(again), "a redone analysis makes the same objects (every UID included)"
    newer = replace(MODELS, classifier_version="8.0")
    other = build_seg(case.image, case.findings, newer, SETTINGS)
    assert other.SeriesInstanceUID != first.SeriesInstanceUID and other.SOPInstanceUID != first.SOPInstanceUID
    reweighted = build_seg(case.image, case.findings, replace(MODELS, weights_sha256=("ab" * 32,)), SETTINGS)
    assert reweighted.SOPInstanceUID != first.SOPInstanceUID, "other weights, other objects"
    assert reweighted.SeriesInstanceUID == first.SeriesInstanceUID, "same software version, same series"
    sr = build_sr(case.image, case.findings, MODELS, first, SETTINGS)
    assert sr.SeriesInstanceUID not in (first.SeriesInstanceUID, case.image.dataset.SeriesInstanceUID)
    assert sr.SOPInstanceUID == build_sr(case.image, case.findings, MODELS, again, SETTINGS).SOPInstanceUID
    assert sr.SOPInstanceUID != first.SOPInstanceUID
    cine = cases["us-cine-frame3"]
    frame2 = build_sr(replace(cine.image, frame_number=2), cine.findings, MODELS, None, SETTINGS)
    frame3 = build_sr(cine.image, cine.findings, MODELS, None, SETTINGS)
    assert frame2.SOPInstanceUID != frame3.SOPInstanceUID
    assert frame2.SeriesInstanceUID != frame3.SeriesInstanceUID, "one series per output object (OHIF: one per series)"
    assert frame3.SeriesInstanceUID == build_sr(cine.image, cine.findings, MODELS, None, SETTINGS).SeriesInstanceUID
    for uid in _uids(first) | _uids(sr):
        assert pydicom.uid.UID(uid).is_valid, uid


def test_output_uids_under_an_organisation_root(cases: dict[str, Case]) -> None:
    case = cases["mg-left"]
    root = "1.2.826.0.1.3680043.10.1234."
    seg = build_seg(case.image, case.findings, MODELS, replace(SETTINGS, uid_root=root))
    assert seg.SOPInstanceUID.startswith(root) and seg.SeriesInstanceUID.startswith(root)
    assert len(seg.SOPInstanceUID) <= 64 and pydicom.uid.UID(seg.SOPInstanceUID).is_valid
    assert seg.SOPInstanceUID != build_seg(case.image, case.findings, MODELS, SETTINGS).SOPInstanceUID
    with pytest.raises(ValueError, match="uid_root"):
        build_seg(case.image, case.findings, MODELS, replace(SETTINGS, uid_root="1.2.x."))


# ------------------------------------------------------------------------------------------------- SR round trip

def _series_description(kind: str, case: Case) -> str:
    """Each output series names the source image (and frame) it belongs to."""
    src = case.image.dataset
    frame = f" frame {case.image.frame_number}" if case.image.frame_number else ""
    return f"BraNet RESEARCH USE ONLY {kind} image {src.InstanceNumber}{frame}"


def _items(node: pydicom.Dataset, value: str) -> list[pydicom.Dataset]:
    return [i for i in node.get("ContentSequence", []) if i.ConceptNameCodeSequence[0].CodeValue == value]


def _only(node: pydicom.Dataset, value: str) -> pydicom.Dataset:
    found = _items(node, value)
    assert len(found) == 1, (value, len(found))
    return found[0]


def _algorithm_of(node: pydicom.Dataset) -> tuple[str, str]:
    return _only(node, "111001").TextValue, _only(node, "111003").TextValue


def _check_sr_header(sr: pydicom.Dataset, case: Case) -> None:
    src = case.image.dataset
    assert sr.SOPClassUID == COMPREHENSIVE_SR
    assert sr.CompletionFlag == "PARTIAL" and sr.VerificationFlag == "UNVERIFIED"
    assert int(sr.SeriesNumber) == SETTINGS.sr_series_number
    assert sr.SeriesDescription == _series_description("SR", case)
    assert sr.SeriesInstanceUID != src.SeriesInstanceUID
    assert sr.Manufacturer == branet_pacs.MANUFACTURER and sr.ManufacturerModelName == "BraNet-PACS"
    assert MODELS.classifier_version in " ".join(sr.SoftwareVersions)
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyTime"):
        assert sr.get(keyword) == src.get(keyword), keyword
    assert [c.CodeValue for c in sr.PerformedProcedureCodeSequence] == [case.procedure]
    root = sr
    assert root.ConceptNameCodeSequence[0].CodeValue == codes.REPORT_TITLE.value
    assert root.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert _only(root, "121058").ConceptCodeSequence[0].CodeValue == codes.IMAGING_PROCEDURE.value
    device = [i for i in root.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121013"]
    assert device and device[0].TextValue == "BraNet-PACS"          # Device Observer Name
    # the image library references the analysed source image (and frame)
    entry = _only(_only(_only(root, "111028"), "126200"), "260753009")
    reference = entry.ReferencedSOPSequence[0]
    assert reference.ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert reference.get("ReferencedFrameNumber") == (source_frames(case) or [None])[0]
    laterality = _items(entry, "111027")
    assert [i.ConceptCodeSequence[0].CodeValue for i in laterality] == \
        ([codes.LATERALITY[case.side].value] if case.side else [])


@pytest.mark.parametrize("name", WITH_FINDINGS)
def test_sr_round_trip(cases: dict[str, Case], name: str) -> None:
    case = cases[name]
    src = case.image.dataset
    sr = hd.sr.srread(case.sr_path)
    seg = pydicom.dcmread(case.seg_path)
    _check_sr_header(sr, case)
    evidence = [i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence]
    assert set(evidence) == {src.SOPInstanceUID, seg.SOPInstanceUID}

    report = hd.sr.MeasurementReport.from_sequence(sr.content)
    groups = report.get_image_measurement_groups()
    assert len(groups) == len(case.findings)
    tracking = {int(s.SegmentNumber): s.TrackingUID for s in seg.SegmentSequence}
    for finding, group in zip(case.findings, groups):
        node = group[0]
        assert node.ContentTemplateSequence[0].TemplateIdentifier == "1501"
        assert group.tracking_identifier == f"Lesion {finding.index}"
        assert group.tracking_uid == tracking[finding.index]          # same finding in SEG and SR
        assert group.finding_type.value == codes.LESION.value
        assert _algorithm_of(node) == (branet_pacs.ALGORITHM_NAME, MODELS.algorithm_version)

        (site,) = group.finding_sites
        assert site.value.value == codes.BREAST.value
        if case.side:
            assert site.laterality.value == codes.LATERALITY[case.side].value
        else:
            assert site.laterality is None

        measurement, *certainty = group.get_measurements()
        assert measurement.name.value == codes.PROBABILITY_OF_CANCER.value
        assert measurement.unit.value == "%"
        assert measurement.value / 100.0 == pytest.approx(finding.p_malignant, abs=1e-9)
        assert _algorithm_of(measurement[0]) == (branet_pacs.ALGORITHM_NAME, MODELS.algorithm_version)
        if finding.prompt == "auto":      # the detector's confidence, with the detector as its algorithm
            (certainty,) = certainty
            assert certainty.name.value == codes.CERTAINTY_OF_FINDING.value and certainty.unit.value == "%"
            assert certainty.value / 100.0 == pytest.approx(finding.proposal_score, abs=1e-9)
            assert _algorithm_of(certainty[0]) == (MODELS.detector_name, MODELS.detector_version)
        else:
            assert certainty == []

        (evaluation,) = group.get_qualitative_evaluations()
        assert evaluation.name.value == codes.IMPRESSION.value != "111042"   # an assessment, not histology
        assert evaluation.value.value == codes.LABEL_CODES[finding.label].value

        (comment,) = _items(node, codes.COMMENT.value)               # the call in words, for viewers showing text
        assert comment.TextValue == call_text(finding, MODELS)
        assert comment.TextValue.startswith(finding.label.capitalize() + ": p(malignant) ")

        # the outline hangs under the probability (INFERRED FROM), where OHIF reads it with the group's text
        (region,) = measurement.referenced_coordinates
        assert region.relationship_type == hd.sr.RelationshipTypeValues.INFERRED_FROM
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        points = region.value
        # DICOM image coordinates: the centre of pixel (row 0, column 0) is (0.5, 0.5)
        np.testing.assert_allclose(points, finding.outline + 0.5, atol=1e-4)
        assert np.array_equal(points[0], points[-1]) and len(points) >= 4
        assert points[:, 0].min() >= 0 and points[:, 0].max() <= src.Columns
        assert points[:, 1].min() >= 0 and points[:, 1].max() <= src.Rows
        on = region.ContentSequence[0].ReferencedSOPSequence[0]
        assert on.ReferencedSOPInstanceUID == src.SOPInstanceUID and on.ReferencedSOPClassUID == src.SOPClassUID
        assert on.get("ReferencedFrameNumber") == (source_frames(case) or [None])[0]

        segment_ref = _only(node, codes.ILLUSTRATION_OF_ROI.value).ReferencedSOPSequence[0]
        assert segment_ref.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert segment_ref.ReferencedSOPClassUID == SEGMENTATION
        assert int(segment_ref.ReferencedSegmentNumber) == finding.index
        assert not _items(node, "121214") and not _items(node, "121191")  # only the SCOORD is the ROI


def test_no_finding_sr_says_analysed_and_nothing_found(cases: dict[str, Case]) -> None:
    case = cases["mg-right-none"]
    sr = hd.sr.srread(case.sr_path)
    _check_sr_header(sr, case)
    assert not _items(sr, "126010")                                 # no Imaging Measurements container
    (evaluation,) = _only(sr, codes.QUALITATIVE_EVALUATIONS.value).ContentSequence
    assert evaluation.ConceptNameCodeSequence[0].CodeValue == codes.IMPRESSION.value
    assert evaluation.ConceptCodeSequence[0].CodeValue == codes.NO_ABNORMALITY.value
    assert hd.sr.MeasurementReport.from_sequence(sr.content).get_image_measurement_groups() == []


def test_sr_refuses_inconsistent_input(cases: dict[str, Case]) -> None:
    case = cases["us"]
    seg = pydicom.dcmread(case.seg_path)
    with pytest.raises(ValueError, match="label"):
        build_sr(case.image, [replace(case.findings[0], label="suspicious")], MODELS, seg, SETTINGS)
    with pytest.raises(ValueError, match="no segment"):
        build_sr(case.image, [replace(case.findings[0], index=2)], MODELS, seg, SETTINGS)
    with pytest.raises(ValueError, match="outside"):
        build_sr(case.image, [replace(case.findings[0], p_malignant=1.5)], MODELS, seg, SETTINGS)


# --------------------------------------------------------------------------------------------- real validators

# The only warnings the validators give on our outputs, and why they stay:
KNOWN_WARNINGS = (
    # pixelmed's 2022 TID 1501 lacks the qualitative-evaluation row that carries benign/malignant, and warns on
    # the Comment TEXT we add to the (extensible) group so that viewers showing only text can read the call.
    '(121073,DCM,"Impression"): Content Item not in template',
    '(121106,DCM,"Comment"): Content Item not in template',
    # dcentvfy files AccessionNumber under the Series IE for SR documents; the value is the study's, copied.
    "Element=<AccessionNumber> IE <Study> versus <Series>",
    # The DX source lacks these Type 2 attributes; the SEG/SR IODs require them present (empty).
    "Attribute present in one instance but not the other",
    "Missing attribute or value that would be needed to build DICOMDIR",
    # dcmtk's dsrdump does not check the Mammography CAD SR's templates (pixelmed does), and says so.
    "Check for template constraints not yet supported",
)


@pytest.mark.integration
def test_every_validator_finds_every_output_clean(cases: dict[str, Case]) -> None:
    items = [(cases[n].seg_path, cases[n].sr_path, [cases[n].source_path]) for n in ALL_CASES]
    results = validate.validate_outputs_many(items)
    assert len(results) == len(items)
    for name, reports in zip(ALL_CASES, results):
        tools = [r.tool for r in reports]
        expected = (["dciodvfy"] if cases[name].seg_path else []) + \
            ["dciodvfy", "dcentvfy", "dsrdump", "pixelmed DicomSRValidator"]
        assert tools == expected, name
        for report in reports:
            assert report.ok, f"{name}: {report.summary()}\n{report.output}"
            unexplained = [w for w in report.warnings if not any(k in w for k in KNOWN_WARNINGS)]
            assert not unexplained, (name, report.tool, unexplained)
            if name != "dx-bare":
                assert not any("present in one instance" in w or "DICOMDIR" in w for w in report.warnings), name


@pytest.mark.integration
def test_validators_report_failures(cases: dict[str, Case], tmp_path: Path) -> None:
    case = cases["mg-left"]
    seg = pydicom.dcmread(case.seg_path)
    del seg.SegmentSequence                                     # Type 1 in the Segmentation Image module
    bad_seg = tmp_path / "bad-seg.dcm"
    seg.save_as(bad_seg, enforce_file_format=False)
    report = validate.dciodvfy(bad_seg)
    assert not report.ok and any("SegmentSequence" in e for e in report.errors)

    other = pydicom.dcmread(case.sr_path)
    other.PatientID = "SOMEONE-ELSE"
    other_path = tmp_path / "other-patient-sr.dcm"
    other.save_as(other_path, enforce_file_format=True)
    assert not validate.dcentvfy([other_path, case.source_path]).ok

    assert not validate.dsrdump(case.source_path).ok            # an image is not an SR document
    missing = validate.dciodvfy(tmp_path / "does-not-exist.dcm")
    assert not missing.ok and missing.errors

    broken = pydicom.dcmread(cases["us"].sr_path)
    procedure = _only(broken, "121058").ConceptCodeSequence[0]
    procedure.CodeValue, procedure.CodeMeaning = "47079000", "Ultrasonography of breast"  # not in CID 100
    broken_path = tmp_path / "broken-sr.dcm"
    broken.save_as(broken_path, enforce_file_format=True)
    report = validate.pixelmed_sr(broken_path)
    assert not report.ok and any("context group 100" in e for e in report.errors), report.output


def test_references_to_a_single_frame_sop_class_name_no_frame(cases: dict[str, Case]) -> None:
    """A Secondary Capture source carrying NumberOfFrames = 1 is still a single-frame IOD: no Referenced Frame
    Number anywhere (dciodvfy reports one as an error); the US cine (multi-frame class) keeps its frame."""
    sc = cases["sc-one-frame"]
    for path in (sc.seg_path, sc.sr_path):
        assert not [e for e in pydicom.dcmread(path).iterall() if e.keyword == "ReferencedFrameNumber"], path.name
    cine = pydicom.dcmread(cases["us-cine-frame3"].sr_path)
    assert [int(e.value) for e in cine.iterall() if e.keyword == "ReferencedFrameNumber"]


# ------------------------------------------------------------------------------------------- Mammography CAD SR

MG_CASES = ["mg-left", "mg-right-none", "sc-one-frame"]


def _cad_item(node: pydicom.Dataset, path: Sequence[int]) -> pydicom.Dataset:
    """The content item at a Referenced Content Item Identifier (1 = the root)."""
    assert path[0] == 1
    for position in path[1:]:
        node = node.ContentSequence[position - 1]
    return node


@pytest.fixture(scope="module")
def cad_files(cases: dict[str, Case], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("cad")
    files = {}
    for name in MG_CASES:
        case = cases[name]
        cad = build_mammography_cad_sr(case.image, case.findings, MODELS, SETTINGS)
        files[name] = out / f"{name}-cad.dcm"
        cad.save_as(files[name], enforce_file_format=True)
    return files


@pytest.mark.parametrize("name", MG_CASES)
def test_mammography_cad_sr_content(cases: dict[str, Case], cad_files: dict[str, Path], name: str) -> None:
    case = cases[name]
    src = case.image.dataset
    cad = pydicom.dcmread(cad_files[name])
    assert cad.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.50" == cad.file_meta.MediaStorageSOPClassUID
    assert cad.Modality == "SR" and int(cad.SeriesNumber) == SETTINGS.cad_sr_series_number
    assert cad.SeriesDescription == _series_description("CAD SR", case)
    assert cad.SeriesInstanceUID != build_sr(case.image, case.findings, MODELS, None, SETTINGS).SeriesInstanceUID
    assert cad.CompletionFlag == "PARTIAL" and cad.VerificationFlag == "UNVERIFIED"
    assert cad.ConceptNameCodeSequence[0].CodeValue == "111036"
    assert cad.ContentTemplateSequence[0].TemplateIdentifier == "4000"
    summary = _only(cad, "111017")
    assert summary.ConceptCodeSequence[0].CodeValue == ("111242" if case.findings else "111241")
    # the Image Library entry the outlines point at is the analysed image
    entry = _cad_item(cad, LIBRARY_ENTRY)
    assert entry.ValueType == "IMAGE" and "ConceptNameCodeSequence" not in entry
    assert entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    side = [i.ConceptCodeSequence[0].CodeValue for i in _items(entry, "111027")]
    assert side == [{"L": "80248007", "R": "73056007"}[case.side]]
    impressions = summary.get("ContentSequence", [])
    assert len(impressions) == len(case.findings)
    for finding, impression in zip(case.findings, impressions):
        assert impression.RelationshipType == "INFERRED FROM"
        (single,) = _items(impression, "111059")
        (probability,) = _items(single, "111047")
        assert float(probability.MeasuredValueSequence[0].NumericValue) / 100 == pytest.approx(finding.p_malignant,
                                                                                               abs=1e-6)
        certainty = _items(single, codes.CERTAINTY_OF_FINDING.value)
        assert len(certainty) == (1 if finding.prompt == "auto" else 0)
        (outline,) = _items(single, "111041")
        np.testing.assert_allclose(np.reshape(outline.GraphicData, (-1, 2)), finding.outline + 0.5, atol=1e-4)
        (centre,) = _items(single, "111010")
        assert centre.GraphicType == "POINT"
        for scoord in (outline, centre):
            (reference,) = scoord.ContentSequence
            assert reference.RelationshipType == "SELECTED FROM"
            assert list(reference.ReferencedContentItemIdentifier) == list(LIBRARY_ENTRY)


def test_mammography_cad_sr_is_for_mammograms_only(cases: dict[str, Case]) -> None:
    case = cases["us"]
    with pytest.raises(ValueError, match="mammograms"):
        build_mammography_cad_sr(case.image, case.findings, MODELS, SETTINGS)


@pytest.mark.integration
def test_every_validator_finds_every_cad_sr_clean(cases: dict[str, Case], cad_files: dict[str, Path]) -> None:
    items = [(None, cad_files[n], [cases[n].source_path]) for n in MG_CASES]
    for name, reports in zip(MG_CASES, validate.validate_outputs_many(items)):
        assert [r.tool for r in reports] == ["dciodvfy", "dcentvfy", "dsrdump", "pixelmed DicomSRValidator"]
        for report in reports:
            assert report.ok, f"{name}: {report.summary()}\n{report.output}"
            unexplained = [w for w in report.warnings if not any(k in w for k in KNOWN_WARNINGS)]
            assert not unexplained, (name, report.tool, unexplained)
