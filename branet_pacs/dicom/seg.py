"""DICOM Segmentation writer: one BINARY segment per finding, on the analysed source frame (highdicom).

`build_seg` is the entry point. Equipment, UIDs, the reference header and laterality come from `dicom.derived`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom

from branet_pacs.config import OutputSettings
from branet_pacs.dicom import codes
from branet_pacs.dicom.derived import (
    content_uid,
    equipment,
    instance_uid,
    is_multi_frame,
    series_description,
    series_uid,
    source_for_reference,
    tracking_uid,
)
from branet_pacs.types import BreastImage, Finding, ModelIdentity

CONTENT_LABEL = "BRANET_LESIONS"  # CS, at most 16 characters


def _anatomic_region(side: str | None) -> hd.sr.CodedConcept:
    region = hd.sr.CodedConcept.from_code(codes.BREAST)
    if side is not None:
        region.AnatomicRegionModifierSequence = [hd.sr.CodedConcept.from_code(codes.LATERALITY[side])]
    return region


def _algorithm(models: ModelIdentity) -> hd.AlgorithmIdentificationSequence:
    eq = equipment(models)
    return hd.AlgorithmIdentificationSequence(
        name=eq.algorithm_name,
        family=codes.ALGORITHM_FAMILY,
        version=eq.algorithm_version,
        source=eq.manufacturer,
    )


def segment_description(finding: Finding, image: BreastImage, models: ModelIdentity,
                        settings: OutputSettings) -> hd.seg.SegmentDescription:
    """Segment N: "Lesion N", SCT morphologically abnormal structure / lesion, automatic, with the finding's
    Tracking UID (the SR's measurement group for the finding repeats it)."""
    side = image.laterality
    return hd.seg.SegmentDescription(
        segment_number=finding.index,
        segment_label=f"Lesion {finding.index}",
        segmented_property_category=codes.SEGMENT_CATEGORY,
        segmented_property_type=codes.LESION,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_algorithm(models),
        tracking_uid=tracking_uid(settings, image, finding.index, models),
        tracking_id=f"Lesion {finding.index}",
        anatomic_regions=[_anatomic_region(side)],
    )


def _check_findings(image: BreastImage, findings: Sequence[Finding]) -> list[Finding]:
    if not findings:
        raise ValueError("build_seg needs at least one finding (an image without finding gets an SR only)")
    ordered = sorted(findings, key=lambda f: f.index)
    numbers = [f.index for f in ordered]
    if numbers != list(range(1, len(ordered) + 1)):
        raise ValueError(f"finding indices must be 1..{len(ordered)} (they are the segment numbers), got {numbers}")
    rows, cols = int(image.dataset.Rows), int(image.dataset.Columns)
    for f in ordered:
        if f.mask.shape != (rows, cols):
            raise ValueError(f"finding {f.index}: mask shape {f.mask.shape} is not the source frame {(rows, cols)}")
        if not f.mask.any():
            raise ValueError(f"finding {f.index}: empty mask")
    return ordered


def _frame_count(dataset: pydicom.Dataset) -> int:
    return int(dataset.get("NumberOfFrames", 1) or 1)


def build_seg(image: BreastImage, findings: Sequence[Finding], models: ModelIdentity,
              settings: OutputSettings) -> hd.seg.Segmentation:
    """DICOM Segmentation (BINARY) of `findings` on the analysed frame of `image`.

    One segment per finding, segment number = finding.index (findings must be numbered 1..n), label "Lesion N".
    The segmentation is a new series in the source's study. Raises ValueError on an empty `findings` (an image
    without finding gets an SR and no SEG), on masks that do not match the source frame, or on empty masks.
    """
    ordered = _check_findings(image, findings)
    source = source_for_reference(image)
    eq = equipment(models)
    masks = np.stack([f.mask.astype(bool) for f in ordered], axis=-1)[np.newaxis]  # (1, rows, cols, segments)

    frame_number = image.frame_number
    if frame_number is not None and not 1 <= frame_number <= _frame_count(source):
        raise ValueError(f"frame {frame_number} is not a frame of the source ({_frame_count(source)} frames)")
    true_class = str(source.SOPClassUID)
    patch_frame: int | None = None
    if "NumberOfFrames" in source and not is_multi_frame(source):
        del source.NumberOfFrames   # a single-frame SOP class carrying the attribute: references name no frame
    geometry = hd.spatial.get_image_coordinate_system(source)
    if geometry is None and "PixelSpacing" in source:
        # Without patient geometry highdicom (0.28) copies Pixel Spacing into a Pixel Measures item without Slice
        # Thickness, which its own reader then rejects; the SEG is aligned with the source by reference anyway.
        del source.PixelSpacing
    if "NumberOfFrames" in source and geometry is not None:
        # Multi-frame source with patient/slide geometry: highdicom places frames by position; give it the whole
        # stack (empty frames are omitted) so the reference to the analysed frame comes out right.
        stack = np.zeros((_frame_count(source), *masks.shape[1:]), dtype=bool)
        stack[(frame_number or 1) - 1] = masks[0]
        masks = stack
    elif "NumberOfFrames" in source:
        # Multi-frame source without a frame of reference (US cine, multi-frame SC): highdicom accepts a single
        # frame only then, and reads pixel measures of multi-frame sources from functional groups that legacy
        # multi-frame objects do not have. Build from a single-frame stand-in of the analysed frame, then point
        # the references back at the real SOP class and frame.
        source = _single_frame_stand_in(source)
        patch_frame = frame_number or 1

    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment_description(f, image, models, settings) for f in ordered],
        series_instance_uid=series_uid(settings, image, "SEG", models),
        series_number=settings.seg_series_number,
        sop_instance_uid=instance_uid(settings, image, "SEG", models),
        instance_number=int(image.dataset.get("InstanceNumber") or 1),
        manufacturer=eq.manufacturer,
        manufacturer_model_name=eq.model_name,
        software_versions=list(eq.software_versions),
        device_serial_number=eq.serial_number,
        content_label=CONTENT_LABEL,
        content_description="BraNet-PACS lesion segmentation, research use only",
        series_description=series_description(settings, image, "SEG"),
        institution_name=settings.institution_name or None,
    )
    if patch_frame is not None:
        _reference_frame(seg, str(image.dataset.SOPInstanceUID), true_class, patch_frame)
    _fix_dimension_organization(seg, content_uid(settings, image, "SEG", "dimension-organization", models))
    _shared_pixel_measures(seg, image.dataset)
    if hd.spatial.get_image_coordinate_system(image.dataset) is None:
        # General Image module: Patient Orientation is Type 2C, required when the image has no patient geometry.
        seg.PatientOrientation = image.dataset.get("PatientOrientation", "")
    return seg


def pixel_spacing_mm(ds: pydicom.Dataset) -> list[float] | None:
    """(row, column) spacing in mm of the source: Pixel Spacing, else Imager Pixel Spacing (projection images), else
    the physical deltas of a single calibrated ultrasound region (cm, PS3.3 C.8.5.5: units code 3); None when the
    source says nothing about it."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
            return [float(v) for v in value]
    regions = ds.get("SequenceOfUltrasoundRegions") or []
    calibrated = [r for r in regions if r.get("PhysicalUnitsXDirection") == 3 and r.get("PhysicalUnitsYDirection") == 3
                  and float(r.get("PhysicalDeltaX", 0) or 0) > 0 and float(r.get("PhysicalDeltaY", 0) or 0) > 0]
    if len({(float(r.PhysicalDeltaY), float(r.PhysicalDeltaX)) for r in calibrated}) == 1:
        return [10.0 * float(calibrated[0].PhysicalDeltaY), 10.0 * float(calibrated[0].PhysicalDeltaX)]
    return None


def _shared_pixel_measures(seg: hd.seg.Segmentation, source: pydicom.Dataset) -> None:
    """A Pixel Measures item in the Shared Functional Groups, holding the source's pixel spacing when it has one.

    highdicom writes none for sources without a frame of reference (US, MG, SC); viewers that read the SEG's
    geometry from its functional groups (OHIF) fail without the item. The spacing is the source's own (the SEG
    frame is the source frame); a source without calibration gets an item without Pixel Spacing (the attribute is
    Type 1C, required only when the image is calibrated), never an invented one."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "PixelMeasuresSequence" in shared:
        return
    measures = pydicom.Dataset()
    spacing = pixel_spacing_mm(source)
    if spacing is not None:
        measures.PixelSpacing = [f"{v:.10g}" for v in spacing]
    shared.PixelMeasuresSequence = [measures]


def _fix_dimension_organization(seg: hd.seg.Segmentation, uid: str) -> None:
    """highdicom mints a random Dimension Organization UID: replace it with a derived one (same object, same UIDs)."""
    old = {str(item.DimensionOrganizationUID) for item in seg.get("DimensionOrganizationSequence", [])}
    for item in [*seg.get("DimensionOrganizationSequence", []), *seg.get("DimensionIndexSequence", [])]:
        if str(item.get("DimensionOrganizationUID", "")) in old:
            item.DimensionOrganizationUID = uid


# Single-frame SOP classes standing in for legacy multi-frame ones while highdicom builds the SEG.
_STAND_IN_CLASS = {"US": "1.2.840.10008.5.1.4.1.1.6.1"}   # US Image Storage
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"         # Secondary Capture Image Storage


def _single_frame_stand_in(source: pydicom.Dataset) -> pydicom.Dataset:
    stand_in = copy.deepcopy(source)
    del stand_in.NumberOfFrames
    for keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence", "FrameIncrementPointer"):
        if keyword in stand_in:
            delattr(stand_in, keyword)
    stand_in.SOPClassUID = _STAND_IN_CLASS.get(str(source.get("Modality", "")), _SECONDARY_CAPTURE)
    return stand_in


def _reference_frame(seg: hd.seg.Segmentation, sop_instance_uid: str, sop_class_uid: str, frame: int) -> None:
    """Point every reference to the source at its real SOP class and at the analysed frame (Referenced Frame
    Number is required when a reference is to part of a multi-frame instance)."""
    def fix(item: pydicom.Dataset, with_frame: bool) -> None:
        if item.ReferencedSOPInstanceUID == sop_instance_uid:
            item.ReferencedSOPClassUID = sop_class_uid
            if with_frame:
                item.ReferencedFrameNumber = frame

    for fg in seg.PerFrameFunctionalGroupsSequence:
        for derivation in fg.get("DerivationImageSequence", []):
            for item in derivation.get("SourceImageSequence", []):
                fix(item, True)
    # highdicom shares one item between Source Image Sequence and the Common Instance Reference module, whose
    # SOP Instance Reference Macro has no frame number: give each its own item.
    for series in seg.get("ReferencedSeriesSequence", []):
        series.ReferencedInstanceSequence = [copy.deepcopy(i) for i in series.ReferencedInstanceSequence]
        for item in series.ReferencedInstanceSequence:
            fix(item, False)
    for item in seg.get("SourceImageSequence", []):
        fix(item, True)


def read_seg(source: str | os.PathLike[str] | pydicom.Dataset) -> hd.seg.Segmentation:
    """A BraNet SEG (or any 2-D SEG without a Frame of Reference) as a highdicom Segmentation.

    highdicom 0.28's reader insists on Slice Thickness and Pixel Spacing in a Pixel Measures item; PS3.3
    C.7.6.16.2.1 (CP 1426) requires Slice Thickness only with a Frame of Reference, and Pixel Spacing only for a
    calibrated source. Such an item is left out of the object handed to highdicom (the file is not changed)."""
    ds = copy.deepcopy(source) if isinstance(source, pydicom.Dataset) else pydicom.dcmread(source)
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and "PixelMeasuresSequence" in shared[0]:
        measures = shared[0].PixelMeasuresSequence[0]
        if "SliceThickness" not in measures or "PixelSpacing" not in measures:
            del shared[0].PixelMeasuresSequence
    return hd.seg.Segmentation.from_dataset(ds, copy=False)
