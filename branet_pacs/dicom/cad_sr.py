"""Mammography CAD SR (SOP class 1.2.840.10008.5.1.4.1.1.88.50, TID 4000) for one analysed mammogram.

What PACS and mammography workstations that overlay CAD marks read. Written next to the TID 1500 SR when
`[output] mammography_cad_sr = true`, for MG images only. Content tree (PS3.16):

    CONTAINER Mammography CAD Report (TID 4000)
      Language of Content Item and Descendants (TID 1204)
      CODE CAD Processing and Findings Summary = All algorithms succeeded; with(out) findings (TID 4001)
        INFERRED FROM CONTAINER Individual Impression/Recommendation, one per finding (TID 4003)
          Rendering Intent = Presentation Required
          CODE Single Image Finding = Mammography breast density, i.e. a mass (TID 4006)
            Rendering Intent = Presentation Required
            Algorithm Name / Algorithm Version (TID 4019)
            NUM Certainty of Finding % (the lesion detector's confidence; automatic findings only)
            NUM Probability of cancer %
            SCOORD Center (POINT) and Outline (closed POLYLINE), SELECTED FROM the Image Library entry by reference
      CONTAINER Image Library: IMAGE the source mammogram (TID 4020: laterality, view, pixel spacing, rows/columns)
      CODE Summary of Detections = Succeeded
        INFERRED FROM Successful Detections: Detection Performed = (mass) (TID 4015/4017)
      CODE Summary of Analyses = Succeeded, INFERRED FROM Successful Analyses: Analysis Performed = Individual
        Impression/Recommendation Analysis (the classifier, the image) (TID 4016/4018)

The detector looks for masses (the training data are masses); see MASS for the code CAD uses for them.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr import RelationshipTypeValues as Rel
from pydicom.sr.coding import Code

from branet_pacs.config import OutputSettings
from branet_pacs.dicom import codes
from branet_pacs.dicom.codes import MAMMOGRAPHY_CAD_SR
from branet_pacs.dicom.derived import (
    equipment,
    referenced_frames,
    source_for_reference,
)
from branet_pacs.dicom.seg import pixel_spacing_mm
from branet_pacs.dicom.sr import PIXEL_CENTRE_OFFSET, scoord_points, sr_document
from branet_pacs.types import BreastImage, Finding, ModelIdentity

# Position of the Image Library entry in the tree (root 1 > 3rd child: Image Library > its 1st item), which the
# outlines reference: Language (1), CAD Processing and Findings Summary (2), Image Library (3).
LIBRARY_ENTRY = (1, 3, 1)

MAMMOGRAPHY_CAD_REPORT = Code("111036", "DCM", "Mammography CAD Report")
CAD_PROCESSING_SUMMARY = Code("111017", "DCM", "CAD Processing and Findings Summary")
ALL_SUCCEEDED_WITH_FINDINGS = Code("111242", "DCM", "All algorithms succeeded; with findings")
ALL_SUCCEEDED_WITHOUT_FINDINGS = Code("111241", "DCM", "All algorithms succeeded; without findings")
INDIVIDUAL_IMPRESSION = Code("111034", "DCM", "Individual Impression/Recommendation")
RENDERING_INTENT = Code("111056", "DCM", "Rendering Intent")
PRESENTATION_REQUIRED = Code("111150", "DCM", "Presentation Required: Rendering device is expected to present")
SINGLE_IMAGE_FINDING = Code("111059", "DCM", "Single Image Finding")
# CID 6014 has no "Mass"; mammography CAD reports masses as (129793001, SCT) "Mammography breast density"
# (F-01796 in SNOMED RT), the term the CAD templates inherited from BI-RADS' older "density".
MASS = Code("129793001", "SCT", "Mammography breast density")
PROBABILITY_OF_CANCER = Code("111047", "DCM", "Probability of cancer")
CENTER = Code("111010", "DCM", "Center")
OUTLINE = Code("111041", "DCM", "Outline")
ALGORITHM_NAME = Code("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = Code("111003", "DCM", "Algorithm Version")
IMAGE_LIBRARY = Code("111028", "DCM", "Image Library")
IMAGE_LATERALITY = Code("111027", "DCM", "Image Laterality")
BREAST_SIDE = {"L": Code("80248007", "SCT", "Left breast"), "R": Code("73056007", "SCT", "Right breast")}  # CID 6022
IMAGE_VIEW = Code("111031", "DCM", "Image View")
HORIZONTAL_PIXEL_SPACING = Code("111026", "DCM", "Horizontal Pixel Spacing")
VERTICAL_PIXEL_SPACING = Code("111066", "DCM", "Vertical Pixel Spacing")
PIXEL_DATA_ROWS = Code("110910", "DCM", "Pixel Data Rows")
PIXEL_DATA_COLUMNS = Code("110911", "DCM", "Pixel Data Columns")
SUMMARY_OF_DETECTIONS = Code("111064", "DCM", "Summary of Detections")
SUMMARY_OF_ANALYSES = Code("111065", "DCM", "Summary of Analyses")
SUCCEEDED = Code("111222", "DCM", "Succeeded")
SUCCESSFUL_DETECTIONS = Code("111063", "DCM", "Successful Detections")
SUCCESSFUL_ANALYSES = Code("111062", "DCM", "Successful Analyses")
ANALYSIS_PERFORMED = Code("111004", "DCM", "Analysis Performed")
INDIVIDUAL_IMPRESSION_ANALYSIS = Code("111233", "DCM", "Individual Impression / Recommendation Analysis")  # CID 6043
DETECTION_PERFORMED = Code("111022", "DCM", "Detection Performed")
MILLIMETRE = Code("mm", "UCUM", "millimeter")
PIXELS = Code("{pixels}", "UCUM", "Pixels")


# Placeholder concept name of IMAGE items that have none in the template (highdicom requires a name while
# building; `_drop_placeholder_names` removes it from the finished document).
_UNNAMED = Code("UNNAMED", "99BRANET", "no concept name")


def _sequence(*items: pydicom.Dataset) -> hd.sr.ContentSequence:
    return hd.sr.ContentSequence(list(items))


def _finish_tree(node: pydicom.Dataset) -> None:
    """Remove the placeholder names, and turn each placeholder IMAGE SELECTED FROM into a by-reference
    relationship to the Image Library entry (highdicom builds by-value items only)."""
    items = node.get("ContentSequence", [])
    finished = []
    for item in items:
        names = item.get("ConceptNameCodeSequence")
        if names and names[0].CodeValue == _UNNAMED.value:
            if item.RelationshipType == Rel.SELECTED_FROM.value:
                item = pydicom.Dataset()
                item.RelationshipType = Rel.SELECTED_FROM.value
                item.ReferencedContentItemIdentifier = list(LIBRARY_ENTRY)
            else:
                del item.ConceptNameCodeSequence
        _finish_tree(item)
        finished.append(item)
    if items:
        node[0x0040A730] = pydicom.DataElement(0x0040A730, "SQ", pydicom.Sequence(finished))   # Content Sequence


def _with(item: pydicom.Dataset, *children: pydicom.Dataset) -> pydicom.Dataset:
    item.ContentSequence = _sequence(*children)
    return item


def _algorithm(name: str, version: str, relationship: Rel = Rel.HAS_PROPERTIES) -> list[hd.sr.TextContentItem]:
    """TID 4019 CAD Algorithm Identification."""
    return [hd.sr.TextContentItem(name=ALGORITHM_NAME, value=name, relationship_type=relationship),
            hd.sr.TextContentItem(name=ALGORITHM_VERSION, value=version or "unknown", relationship_type=relationship)]


def _image(image: BreastImage, relationship: Rel) -> hd.sr.ImageContentItem:
    """An IMAGE item for the source without a concept name, as TID 4020 row 1 and SCOORD SELECTED FROM have it."""
    ds = image.dataset
    item = hd.sr.ImageContentItem(
        name=_UNNAMED, referenced_sop_class_uid=str(ds.SOPClassUID),
        referenced_sop_instance_uid=str(ds.SOPInstanceUID), referenced_frame_numbers=referenced_frames(image),
        relationship_type=relationship)
    return item


def _rendering_intent() -> hd.sr.CodeContentItem:
    return hd.sr.CodeContentItem(name=RENDERING_INTENT, value=PRESENTATION_REQUIRED,
                                 relationship_type=Rel.HAS_CONCEPT_MOD)


def _library_entry(image: BreastImage) -> hd.sr.ImageContentItem:
    """TID 4020 CAD Image Library Entry for the analysed mammogram."""
    ds = image.dataset
    entry = _image(image, Rel.CONTAINS)
    attributes: list[pydicom.Dataset] = []
    if image.laterality in BREAST_SIDE:
        attributes.append(hd.sr.CodeContentItem(name=IMAGE_LATERALITY, value=BREAST_SIDE[image.laterality],
                                                relationship_type=Rel.HAS_ACQ_CONTEXT))
    view = (ds.get("ViewCodeSequence") or [None])[0]
    if view is not None and view.get("CodeValue"):
        attributes.append(hd.sr.CodeContentItem(
            name=IMAGE_VIEW, value=hd.sr.CodedConcept(str(view.CodeValue), str(view.CodingSchemeDesignator),
                                                      str(view.CodeMeaning)),
            relationship_type=Rel.HAS_ACQ_CONTEXT))
    spacing = pixel_spacing_mm(ds)
    if spacing is not None:
        for name, value in ((HORIZONTAL_PIXEL_SPACING, spacing[1]), (VERTICAL_PIXEL_SPACING, spacing[0])):
            attributes.append(hd.sr.NumContentItem(name=name, value=float(value), unit=MILLIMETRE,
                                                   relationship_type=Rel.HAS_ACQ_CONTEXT))
    for name, value in ((PIXEL_DATA_ROWS, ds.Rows), (PIXEL_DATA_COLUMNS, ds.Columns)):
        attributes.append(hd.sr.NumContentItem(name=name, value=int(value), unit=PIXELS,
                                               relationship_type=Rel.HAS_ACQ_CONTEXT))
    entry.ContentSequence = _sequence(*attributes)
    return entry


def _single_image_finding(image: BreastImage, finding: Finding, models: ModelIdentity) -> hd.sr.CodeContentItem:
    """TID 4006 Mammography CAD Single Image Finding: a mass, its probability of cancer and its outline."""
    eq = equipment(models)
    children: list[pydicom.Dataset] = [_rendering_intent(), *_algorithm(eq.model_name, models.algorithm_version)]
    if finding.prompt == "auto" and models.detector_name:
        children.append(hd.sr.NumContentItem(name=codes.CERTAINTY_OF_FINDING,
                                             value=round(100.0 * float(finding.proposal_score), 6),
                                             unit=codes.PERCENT, relationship_type=Rel.HAS_PROPERTIES))
    children.append(hd.sr.NumContentItem(name=PROBABILITY_OF_CANCER, value=round(100.0 * float(finding.p_malignant), 6),
                                         unit=codes.PERCENT, relationship_type=Rel.HAS_PROPERTIES))
    # TID 4021 geometry: centre point and outline, each SELECTED FROM the Image Library entry by reference
    # (a placeholder until the tree is done, see _finish_tree)
    rows, columns = np.nonzero(np.asarray(finding.mask))
    centre = (np.array([[columns.mean(), rows.mean()]]) + PIXEL_CENTRE_OFFSET).astype(np.float32)
    for name, graphic_type, points in ((CENTER, hd.sr.GraphicTypeValues.POINT, centre),
                                       (OUTLINE, hd.sr.GraphicTypeValues.POLYLINE, scoord_points(finding))):
        scoord = hd.sr.ScoordContentItem(name=name, graphic_type=graphic_type, graphic_data=points,
                                         relationship_type=Rel.HAS_PROPERTIES)
        scoord.ContentSequence = _sequence(_image(image, Rel.SELECTED_FROM))
        children.append(scoord)
    return _with(hd.sr.CodeContentItem(name=SINGLE_IMAGE_FINDING, value=MASS, relationship_type=Rel.CONTAINS),
                 *children)


def _content(image: BreastImage, findings: Sequence[Finding], models: ModelIdentity) -> hd.sr.ContainerContentItem:
    eq = equipment(models)
    impressions = [_with(hd.sr.ContainerContentItem(name=INDIVIDUAL_IMPRESSION, relationship_type=Rel.INFERRED_FROM),
                         _rendering_intent(), _single_image_finding(image, f, models))
                   for f in sorted(findings, key=lambda f: f.index)]
    summary = hd.sr.CodeContentItem(
        name=CAD_PROCESSING_SUMMARY, value=ALL_SUCCEEDED_WITH_FINDINGS if findings else ALL_SUCCEEDED_WITHOUT_FINDINGS,
        relationship_type=Rel.CONTAINS)
    if impressions:
        _with(summary, *impressions)
    library = _with(hd.sr.ContainerContentItem(name=IMAGE_LIBRARY, relationship_type=Rel.CONTAINS),
                    _library_entry(image))
    detector = models.detector_name or eq.model_name
    performed = _with(hd.sr.CodeContentItem(name=DETECTION_PERFORMED, value=MASS, relationship_type=Rel.CONTAINS),
                      *_algorithm(detector, models.detector_version or models.algorithm_version),
                      _image(image, Rel.HAS_PROPERTIES))           # the image it was run on (TID 4017 row 3)
    detections = _with(hd.sr.CodeContentItem(name=SUMMARY_OF_DETECTIONS, value=SUCCEEDED,
                                             relationship_type=Rel.CONTAINS),
                       _with(hd.sr.ContainerContentItem(name=SUCCESSFUL_DETECTIONS,
                                                        relationship_type=Rel.INFERRED_FROM), performed))
    # the benign/malignant classification of each finding: an individual impression analysis (TID 4016/4018)
    analysis = _with(hd.sr.CodeContentItem(name=ANALYSIS_PERFORMED, value=INDIVIDUAL_IMPRESSION_ANALYSIS,
                                           relationship_type=Rel.CONTAINS),
                     *_algorithm(models.classifier_name, models.classifier_version), _image(image, Rel.HAS_PROPERTIES))
    analyses = _with(hd.sr.CodeContentItem(name=SUMMARY_OF_ANALYSES, value=SUCCEEDED, relationship_type=Rel.CONTAINS),
                     _with(hd.sr.ContainerContentItem(name=SUCCESSFUL_ANALYSES, relationship_type=Rel.INFERRED_FROM),
                           analysis))
    root = hd.sr.ContainerContentItem(name=MAMMOGRAPHY_CAD_REPORT, template_id="4000")
    language = hd.sr.LanguageOfContentItemAndDescendants(hd.sr.templates.DEFAULT_LANGUAGE)
    root.ContentSequence = _sequence(*language, summary, library, detections, analyses)
    assert root.ContentSequence[LIBRARY_ENTRY[1] - 1] is library
    return root


def build_mammography_cad_sr(image: BreastImage, findings: Sequence[Finding], models: ModelIdentity,
                             settings: OutputSettings) -> hd.sr.ComprehensiveSR:
    """Mammography CAD SR for one analysed mammogram (with or without findings)."""
    if image.modality != "MG":
        raise ValueError(f"the Mammography CAD SR is for mammograms, not {image.modality}")
    sr = sr_document(image, models, settings, kind="CAD", series_number=settings.cad_sr_series_number,
                     content=_content(image, findings, models), evidence=[source_for_reference(image)])
    # Same modules as the Comprehensive SR IOD, another SOP class (PS3.3 A.35.5)
    _finish_tree(sr)
    sr.SOPClassUID = MAMMOGRAPHY_CAD_SR
    sr.file_meta.MediaStorageSOPClassUID = MAMMOGRAPHY_CAD_SR
    return sr
