"""Comprehensive SR writer: a TID 1500 Measurement Report of one analysed breast image (highdicom).

Content tree (codes and the reasons for them in `branet_pacs.dicom.codes`):

    CONTAINER Imaging Measurement Report (TID 1500), PARTIAL / UNVERIFIED / PRELIMINARY
      language; observer context = device "BraNet-PACS" (TID 1002/1004)
      procedure reported = Imaging procedure (CID 100); the breast procedure (CID 6050) is in the header's
        Performed Procedure Code Sequence
      CONTAINER Image Library (TID 1600) > Image Library Group > IMAGE Source [frame]
        + Modality, Target Region = Breast, Image Laterality (when known), Pixel Data Rows/Columns
      with findings:
        CONTAINER Imaging Measurements
          one Measurement Group per finding (TID 1501 Measurement and Qualitative Evaluation Group):
            Tracking Identifier "Lesion N" + Tracking UID (= the SEG segment's Tracking UID)
            Finding = Lesion; Finding Site = Breast (+ Laterality Left/Right when known)
            Algorithm Identification (name, model version)
            NUM Probability of cancer in %, with its own Algorithm Identification (TID 300)
              INFERRED FROM SCOORD POLYLINE (closed outline of the lesion) SELECTED FROM the source image [frame]
            NUM Certainty of Finding in % (the lesion detector's confidence; automatic findings only)
            CODE Impression = Benign | Malignant (the device's assessment, codes.IMPRESSION)
            TEXT Comment "Malignant: p 73.4 % (threshold 36.8 %)" (the call in words, codes.COMMENT)
            IMAGE Illustration of ROI -> SEG instance, segment N (codes.ILLUSTRATION_OF_ROI)
      without findings:
        CONTAINER Qualitative Evaluations (TID 1500 row 12): CODE Impression = No abnormality

SCOORD coordinates: Finding.outline holds array-index (column, row) points, where index (0, 0) is the centre of
the top-left pixel; DICOM image coordinates put that centre at (0.5, 0.5), so the SR stores outline + 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr import RelationshipTypeValues as Rel
from pydicom.sr.codedict import codes as pydicom_codes
from pydicom.sr.coding import Code

from branet_pacs.config import OutputSettings
from branet_pacs.dicom import codes
from branet_pacs.dicom.derived import (
    device_uid,
    equipment,
    instance_uid,
    referenced_frames,
    series_description,
    series_uid,
    source_for_reference,
    tracking_uid,
)
from branet_pacs.types import BreastImage, Finding, ModelIdentity

# DICOM image coordinates of an array index (column, row): the centre of pixel (0, 0) is (0.5, 0.5).
PIXEL_CENTRE_OFFSET = 0.5


def _algorithm(models: ModelIdentity) -> hd.sr.AlgorithmIdentification:
    eq = equipment(models)
    return hd.sr.AlgorithmIdentification(name=eq.algorithm_name, version=eq.algorithm_version)


def _observation_context(models: ModelIdentity) -> hd.sr.ObservationContext:
    eq = equipment(models)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid(),
        name=eq.model_name,
        manufacturer_name=eq.manufacturer,
        model_name=eq.model_name,
        serial_number=eq.serial_number,
    )
    observer = hd.sr.ObserverContext(observer_type=pydicom_codes.cid270.Device,
                                     observer_identifying_attributes=device)
    return hd.sr.ObservationContext(observer_device_context=observer)


def breast_procedure(image: BreastImage) -> Code:
    """CID 6050 breast procedure, written to Performed Procedure Code Sequence (see codes.IMAGING_PROCEDURE)."""
    if image.modality == "US":
        return codes.PROCEDURE_BREAST_US
    return codes.PROCEDURE_MAMMOGRAM[image.laterality]


def _image_library(image: BreastImage) -> hd.sr.ContentSequence:
    """TID 1600 Image Library with one entry (TID 1601/1602) for the analysed source image (frame)."""
    ds = image.dataset
    modality = codes.modality(str(ds.get("Modality", "")))
    descriptors = [] if modality is None else [
        hd.sr.CodeContentItem(name=pydicom_codes.DCM.Modality, value=modality, relationship_type=Rel.HAS_ACQ_CONTEXT)]
    descriptors.append(hd.sr.CodeContentItem(name=pydicom_codes.DCM.TargetRegion, value=codes.BREAST,
                                             relationship_type=Rel.HAS_ACQ_CONTEXT))
    side = image.laterality
    if side is not None:
        descriptors.append(hd.sr.CodeContentItem(name=pydicom_codes.DCM.ImageLaterality,
                                                 value=codes.LATERALITY[side], relationship_type=Rel.HAS_ACQ_CONTEXT))
    pixels = hd.sr.CodedConcept(value="{pixels}", meaning="Pixels", scheme_designator="UCUM")
    for name, value in ((pydicom_codes.DCM.PixelDataRows, ds.Rows), (pydicom_codes.DCM.PixelDataColumns, ds.Columns)):
        descriptors.append(hd.sr.NumContentItem(name=name, value=int(value), unit=pixels,
                                                relationship_type=Rel.HAS_ACQ_CONTEXT))
    entry = hd.sr.ImageContentItem(
        name=codes.SOURCE, referenced_sop_class_uid=str(ds.SOPClassUID),
        referenced_sop_instance_uid=str(ds.SOPInstanceUID), referenced_frame_numbers=referenced_frames(image),
        relationship_type=Rel.CONTAINS)
    entry.ContentSequence = hd.sr.ContentSequence(descriptors)
    group = hd.sr.ContainerContentItem(name=pydicom_codes.DCM.ImageLibraryGroup, relationship_type=Rel.CONTAINS)
    group.ContentSequence = hd.sr.ContentSequence([entry])
    library = hd.sr.ContainerContentItem(name=pydicom_codes.DCM.ImageLibrary, relationship_type=Rel.CONTAINS)
    library.ContentSequence = hd.sr.ContentSequence([group])
    return hd.sr.ContentSequence([library])


def scoord_points(finding: Finding) -> np.ndarray:
    """The finding's closed outline in DICOM image coordinates (column, row), float32 as SCOORD stores them."""
    points = np.asarray(finding.outline, dtype=np.float64) + PIXEL_CENTRE_OFFSET
    if len(points) < 4 or not np.array_equal(points[0], points[-1]):
        raise ValueError(f"finding {finding.index}: outline must be a closed polygon of at least 3 vertices")
    return points.astype(np.float32)


def _segment_illustration(seg: pydicom.Dataset, segment_number: int) -> hd.sr.ImageContentItem:
    """TID 1410 row 9 IMAGE (121200, DCM, "Illustration of ROI") -> segment `segment_number` of the SEG instance
    (see codes.ILLUSTRATION_OF_ROI for why not "Referenced Segment(ation Frame)"). No frame numbers: the Image SOP
    Instance Reference Macro needs no Referenced Frame Number when Referenced Segment Number is present."""
    return hd.sr.ImageContentItem(
        name=codes.ILLUSTRATION_OF_ROI,
        referenced_sop_class_uid=str(seg.SOPClassUID),
        referenced_sop_instance_uid=str(seg.SOPInstanceUID),
        referenced_segment_numbers=[int(segment_number)],
        relationship_type=Rel.CONTAINS,
    )


def call_text(finding: Finding, models: ModelIdentity) -> str:
    """The benign/malignant call in words, with the probability and the threshold it was compared with."""
    return (f"{finding.label.capitalize()}: p(malignant) {100.0 * float(finding.p_malignant):.1f} % "
            f"(threshold {100.0 * float(models.threshold):.1f} %)")


def _measurement_group(image: BreastImage, finding: Finding, models: ModelIdentity, seg: pydicom.Dataset | None,
                       tracking_uid: str) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 rather than TID 1410: the outline hangs under the probability (TID 300 INFERRED FROM), the form in
    which OHIF draws an outline together with a text label (it shows no TEXT item of a TID 1410 group)."""
    ds = image.dataset
    if finding.label not in codes.LABEL_CODES:
        raise ValueError(f"finding {finding.index}: label must be 'benign' or 'malignant', got {finding.label!r}")
    if not 0.0 <= float(finding.p_malignant) <= 1.0:
        raise ValueError(f"finding {finding.index}: p_malignant {finding.p_malignant} outside [0, 1]")
    outline = hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=scoord_points(finding),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=str(ds.SOPClassUID), referenced_sop_instance_uid=str(ds.SOPInstanceUID),
            referenced_frame_numbers=referenced_frames(image)),
    )
    side = image.laterality
    site = hd.sr.FindingSite(anatomic_location=codes.BREAST,
                             laterality=codes.LATERALITY[side] if side else None)
    probability = hd.sr.Measurement(
        name=codes.PROBABILITY_OF_CANCER,
        value=round(100.0 * float(finding.p_malignant), 6),
        unit=codes.PERCENT,
        algorithm_id=_algorithm(models),
        referenced_coordinates=[outline],
    )
    measurements = [probability]
    if finding.prompt == "auto" and models.detector_name:
        measurements.append(hd.sr.Measurement(
            name=codes.CERTAINTY_OF_FINDING,
            value=round(100.0 * min(max(float(finding.proposal_score), 0.0), 1.0), 6),
            unit=codes.PERCENT,
            algorithm_id=hd.sr.AlgorithmIdentification(name=models.detector_name,
                                                       version=models.detector_version or "unknown"),
        ))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=f"Lesion {finding.index}"),
        finding_type=codes.LESION,
        algorithm_id=_algorithm(models),
        finding_sites=[site],
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.IMPRESSION,
                                                             value=codes.LABEL_CODES[finding.label])],
    )
    content = group[0].ContentSequence
    content.append(hd.sr.TextContentItem(name=codes.COMMENT, value=call_text(finding, models),
                                         relationship_type=Rel.CONTAINS))
    if seg is not None:
        content.append(_segment_illustration(seg, finding.index))
    return group


def _no_finding_report(image: BreastImage, models: ModelIdentity) -> hd.sr.ContainerContentItem:
    """TID 1500 without imaging measurements: the image was analysed and nothing was found (row 12)."""
    root = hd.sr.ContainerContentItem(name=codes.REPORT_TITLE, template_id="1500")
    content = hd.sr.ContentSequence()
    content.extend(hd.sr.LanguageOfContentItemAndDescendants(hd.sr.templates.DEFAULT_LANGUAGE))
    content.extend(_observation_context(models))
    content.append(hd.sr.CodeContentItem(name=pydicom_codes.DCM.ProcedureReported, value=codes.IMAGING_PROCEDURE,
                                         relationship_type=Rel.HAS_CONCEPT_MOD))
    content.extend(_image_library(image))
    evaluations = hd.sr.ContainerContentItem(name=codes.QUALITATIVE_EVALUATIONS, relationship_type=Rel.CONTAINS)
    evaluations.ContentSequence = hd.sr.ContentSequence([
        hd.sr.CodeContentItem(name=codes.IMPRESSION, value=codes.NO_ABNORMALITY, relationship_type=Rel.CONTAINS),
    ])
    content.append(evaluations)
    root.ContentSequence = content
    return root


def _report(image: BreastImage, findings: Sequence[Finding], models: ModelIdentity, seg: pydicom.Dataset | None,
            settings: OutputSettings) -> pydicom.Dataset:
    if not findings:
        return _no_finding_report(image, models)
    groups = [_measurement_group(image, f, models, seg, tracking_uid(settings, image, f.index, models))
              for f in sorted(findings, key=lambda f: f.index)]
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(models),
        procedure_reported=codes.IMAGING_PROCEDURE,
        imaging_measurements=groups,
        title=codes.REPORT_TITLE,
    )
    root = report[0]
    # the Image Library (TID 1500 row 5) goes before Imaging Measurements (row 6)
    position = next(i for i, item in enumerate(root.ContentSequence)
                    if item.ConceptNameCodeSequence[0].CodeValue == pydicom_codes.DCM.ImagingMeasurements.value)
    for offset, item in enumerate(_image_library(image)):
        root.ContentSequence.insert(position + offset, item)
    return root


def build_sr(image: BreastImage, findings: Sequence[Finding], models: ModelIdentity, seg: pydicom.Dataset | None,
             settings: OutputSettings) -> hd.sr.ComprehensiveSR:
    """Comprehensive SR (TID 1500) for one analysed image; `seg` is the SEG from `build_seg` (None without
    findings). Completion PARTIAL, verification UNVERIFIED, preliminary: AI output awaiting a reader."""
    if findings and seg is not None:
        numbers = {int(s.SegmentNumber) for s in seg.SegmentSequence}
        missing = sorted({f.index for f in findings} - numbers)
        if missing:
            raise ValueError(f"SEG has no segment for finding(s) {missing}")
    evidence = [source_for_reference(image)] + ([seg] if seg is not None else [])
    return sr_document(image, models, settings, kind="SR", series_number=settings.sr_series_number,
                       content=_report(image, findings, models, seg, settings), evidence=evidence)


def sr_document(image: BreastImage, models: ModelIdentity, settings: OutputSettings, *, kind: str,
                series_number: int, content: hd.sr.ContainerContentItem,
                evidence: Sequence[pydicom.Dataset]) -> hd.sr.ComprehensiveSR:
    """An SR document about one analysed image with our header: derived UIDs for `kind` ("SR", "CAD"), equipment,
    the study copied from the source; completion PARTIAL, verification UNVERIFIED, preliminary."""
    eq = equipment(models)
    return hd.sr.ComprehensiveSR(
        evidence=list(evidence),
        content=content,
        series_instance_uid=series_uid(settings, image, kind, models),
        series_number=series_number,
        sop_instance_uid=instance_uid(settings, image, kind, models),
        instance_number=int(image.dataset.get("InstanceNumber") or 1),
        manufacturer=eq.manufacturer,
        manufacturer_model_name=eq.model_name,
        software_versions=list(eq.software_versions),
        device_serial_number=eq.serial_number,
        series_description=series_description(settings, image, "CAD SR" if kind == "CAD" else kind),
        institution_name=settings.institution_name or None,
        performed_procedure_codes=[breast_procedure(image)],
        is_complete=False,
        is_verified=False,
        is_final=False,
    )
