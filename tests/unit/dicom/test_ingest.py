"""Ingest: which instances are breast images, how they become BreastImage values, and how bad input fails."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    RLELossless,
)

from branet_pacs.config import IngestRules
from branet_pacs.dicom.ingest import ingest
from branet_pacs.dicom.pixels import frame_to_gray
from branet_pacs.types import Status

import dicom_factory as factory

RULES = IngestRules()
needs_dcmtk = pytest.mark.skipif(not factory.dcmtk_available(), reason="dcmtk (dcmcjpeg) not installed")


def ingest_written(ds: Dataset, tmp_path, rules: IngestRules = RULES, name: str = "in.dcm"):
    """Ingest `ds` the way most inputs arrive: written to a file first."""
    return ingest(factory.write(ds, tmp_path / name), rules)


# --------------------------------------------------------------------------------------------- mammography

def test_mammogram_is_accepted_with_mask_laterality_and_header(tmp_path):
    ds = factory.make_mg(256, 200, laterality="R")
    outcome = ingest_written(ds, tmp_path)
    assert outcome.status is Status.OK and outcome.reason == ""
    (image,) = outcome.images
    assert image.modality == "MG" and image.laterality == "R" and image.frame_number is None
    assert image.pixels.shape == (256, 200) and image.pixels.dtype == np.float32
    assert image.frame_shape == (256, 200) and image.region == (0, 0, 200, 256)
    assert image.sop_instance_uid == ds.SOPInstanceUID and image.study_instance_uid == ds.StudyInstanceUID
    assert image.source == str(tmp_path / "in.dcm")
    # header kept, bulk pixels dropped
    assert "PixelData" not in image.dataset and image.dataset.Rows == 256 and image.dataset.Columns == 200
    assert image.dataset.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert outcome.dataset is not None and "PixelData" not in outcome.dataset


def test_breast_mask_covers_the_breast_not_air_or_labels(tmp_path):
    for laterality in ("L", "R"):
        ds = factory.make_mg(256, 200, laterality=laterality)
        (image,) = ingest_written(ds, tmp_path).images
        mask = image.breast_mask
        assert mask.dtype == bool and mask.shape == image.pixels.shape
        x0, y0, x1, y1 = factory.lesion_box(ds)
        assert mask[y0:y1, x0:x1].all()                      # the lesion lies inside the breast
        chest_wall = 1 if laterality == "L" else 198
        assert mask[128, chest_wall]                          # tissue at the chest wall
        far_side = slice(185, 199) if laterality == "L" else slice(1, 15)
        assert not mask[5, far_side].any()                    # the burned-in label is not breast
        assert not mask[240:, far_side].any()                 # air
        assert 0.3 < mask.mean() < 0.8


def test_monochrome1_mammogram_is_inverted(tmp_path):
    mono1 = factory.make_mg(256, 200, photometric="MONOCHROME1")
    mono2 = factory.make_mg(256, 200)
    (a,) = ingest_written(mono1, tmp_path, name="m1.dcm").images
    (b,) = ingest_written(mono2, tmp_path, name="m2.dcm").images
    np.testing.assert_allclose(a.pixels, b.pixels, atol=1e-5)
    np.testing.assert_array_equal(a.breast_mask, b.breast_mask)
    x0, y0, x1, y1 = factory.lesion_box(mono1)
    assert a.pixels[(y0 + y1) // 2, (x0 + x1) // 2] > a.pixels[a.breast_mask].mean()   # dense lesion is bright


def test_laterality_falls_back_to_series_laterality(tmp_path):
    ds = factory.make_mg(64, 50, ImageLaterality=None, Laterality="L")
    assert ingest_written(ds, tmp_path).images[0].laterality == "L"
    ds = factory.make_mg(64, 50, ImageLaterality="B")
    assert ingest_written(ds, tmp_path).images[0].laterality is None


def test_for_processing_mammogram_is_skipped_unless_configured(tmp_path):
    ds = factory.make_mg(64, 50, presentation_intent="FOR PROCESSING")
    outcome = ingest_written(ds, tmp_path)
    assert outcome.status is Status.SKIPPED and not outcome.images
    assert "FOR PROCESSING" in outcome.reason and "accept_for_processing" in outcome.reason
    outcome = ingest_written(ds, tmp_path, dataclasses.replace(RULES, accept_for_processing=True))
    assert outcome.status is Status.OK and outcome.images[0].modality == "MG"


def test_for_processing_sop_class_without_intent_is_skipped(tmp_path):
    ds = factory.make_mg(64, 50, presentation_intent="FOR PROCESSING", PresentationIntentType=None)
    outcome = ingest_written(ds, tmp_path)
    assert outcome.status is Status.SKIPPED and "For Processing" in outcome.reason


# ------------------------------------------------------------------------------------- DX / CR / SC / OT

@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")   # lower-case body parts are what we test
@pytest.mark.parametrize("modality, body_part", [("DX", "BREAST"), ("CR", "breast"), ("SC", "Breast "),
                                                 ("OT", "BREAST"), ("RG", "BREAST")])
def test_body_part_modalities_of_the_breast_are_mammograms(modality, body_part, tmp_path):
    outcome = ingest_written(factory.make_dx(body_part, modality), tmp_path)
    assert outcome.status is Status.OK, outcome.reason
    assert outcome.images[0].modality == "MG" and outcome.images[0].breast_mask is not None


def test_dx_chest_is_skipped_naming_the_body_part(tmp_path):
    outcome = ingest_written(factory.make_dx("CHEST"), tmp_path)
    assert outcome.status is Status.SKIPPED
    assert "DX" in outcome.reason and "'CHEST'" in outcome.reason and "breast_body_parts" in outcome.reason


def test_dx_without_body_part_uses_anatomic_region(tmp_path):
    outcome = ingest_written(factory.make_dx("BREAST", BodyPartExamined=None), tmp_path)
    assert outcome.status is Status.OK                      # AnatomicRegionSequence codes SCT 76752008 Breast
    outcome = ingest_written(factory.make_dx("BREAST", BodyPartExamined=None, AnatomicRegionSequence=None), tmp_path)
    assert outcome.status is Status.SKIPPED and "empty" in outcome.reason


def test_configured_body_parts_are_honoured(tmp_path):
    rules = dataclasses.replace(RULES, breast_body_parts=("BREAST", "MAMMA"))
    assert ingest_written(factory.make_dx("MAMMA"), tmp_path, rules).status is Status.OK
    assert ingest_written(factory.make_dx("MAMMA"), tmp_path).status is Status.SKIPPED


# ------------------------------------------------------------------------------------------ other objects

def test_ct_is_skipped_naming_the_modality_rule(tmp_path):
    outcome = ingest_written(factory.make_ct(), tmp_path)
    assert outcome.status is Status.SKIPPED and not outcome.images
    assert "Modality 'CT'" in outcome.reason and "breast_modalities" in outcome.reason
    assert outcome.dataset is not None and outcome.dataset.Modality == "CT"


@pytest.mark.parametrize("make, sop_name", [(factory.make_seg, "Segmentation Storage"),
                                            (factory.make_sr, "Comprehensive SR Storage")])
def test_seg_and_sr_are_skipped_by_sop_class(make, sop_name, tmp_path):
    outcome = ingest_written(make(), tmp_path)
    assert outcome.status is Status.SKIPPED
    assert "non-image" in outcome.reason and sop_name in outcome.reason


@pytest.mark.parametrize("modality", ["KO", "PR", "SEG"])
def test_non_image_modalities_are_skipped_whatever_the_sop_class(modality, tmp_path):
    ds = factory.make_us(32, 32, Modality=modality, SOPClassUID="1.2.3.4.5.6.7")  # private SOP class
    outcome = ingest_written(ds, tmp_path)
    assert outcome.status is Status.SKIPPED and f"Modality '{modality}'" in outcome.reason


def test_object_without_pixel_data_is_skipped(tmp_path):
    ds = factory.make_us(32, 32, SOPClassUID="1.2.3.4.5.6.7")
    del ds.PixelData
    outcome = ingest_written(ds, tmp_path)
    assert outcome.status is Status.SKIPPED and "no Pixel Data" in outcome.reason


def test_image_sop_class_without_pixel_data_is_an_error(tmp_path):
    ds = factory.make_mg(64, 50)
    del ds.PixelData
    outcome = ingest_written(ds, tmp_path)
    assert outcome.status is Status.ERROR and "no Pixel Data" in outcome.reason


def test_breast_tomosynthesis_is_skipped(tmp_path):
    ds = factory.make_mg(64, 50, SOPClassUID="1.2.840.10008.5.1.4.1.1.13.1.3")
    outcome = ingest_written(ds, tmp_path)
    assert outcome.status is Status.SKIPPED and "tomosynthesis" in outcome.reason


# -------------------------------------------------------------------------------------------- ultrasound

def test_us_without_body_part_is_accepted_unless_configured(tmp_path):
    ds = factory.make_us(48, 64, body_part=None)
    assert ingest_written(ds, tmp_path).status is Status.OK
    ds = factory.make_us(48, 64, BodyPartExamined="")
    assert ingest_written(ds, tmp_path).status is Status.OK
    outcome = ingest_written(ds, tmp_path, dataclasses.replace(RULES, accept_us_without_body_part=False))
    assert outcome.status is Status.SKIPPED and "accept_us_without_body_part" in outcome.reason


def test_us_of_another_body_part_is_skipped(tmp_path):
    outcome = ingest_written(factory.make_us(48, 64, body_part="ABDOMEN"), tmp_path)
    assert outcome.status is Status.SKIPPED and "US BodyPartExamined 'ABDOMEN'" in outcome.reason


def test_rgb_us_is_cropped_to_the_2d_region(tmp_path):
    ds = factory.make_us(120, 160, photometric="RGB", with_regions=True)
    (image,) = ingest_written(ds, tmp_path).images
    x0, y0, x1, y1 = factory.us_region(120, 160)
    assert image.modality == "US" and image.breast_mask is None
    assert image.region == (x0, y0, x1, y1) and image.frame_shape == (120, 160)
    assert image.pixels.shape == (y1 - y0, x1 - x0)
    np.testing.assert_array_equal(image.pixels, frame_to_gray(ds, None)[y0:y1, x0:x1])
    # the burned-in UI (white title bar, coloured marks) is gone; the dark lesion is inside
    assert image.pixels.max() < 0.99
    lx0, ly0, lx1, ly1 = factory.lesion_box(ds)
    assert x0 <= lx0 and lx1 <= x1 and y0 <= ly0 and ly1 <= y1
    lesion = image.pixels[ly0 - y0:ly1 - y0, lx0 - x0:lx1 - x0]
    assert lesion.mean() < image.pixels.mean() - 0.1


def test_largest_2d_region_wins_over_larger_non_2d_region(tmp_path):
    ds = factory.make_us(100, 120)

    def region(x0, y0, x1, y1, spatial_format):
        item = Dataset()
        item.RegionSpatialFormat = spatial_format
        item.RegionDataType = 1
        item.RegionFlags = 0
        item.RegionLocationMinX0, item.RegionLocationMinY0 = x0, y0
        item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x1, y1
        return item

    ds.SequenceOfUltrasoundRegions = Sequence([
        region(0, 0, 119, 99, 3),        # a spectral region covering everything: not 2-D
        region(10, 10, 39, 49, 1),       # small 2-D
        region(50, 20, 109, 89, 1),      # largest 2-D (inclusive corners)
        region(200, 200, 300, 300, 1),   # outside the frame: ignored
    ])
    (image,) = ingest_written(ds, tmp_path).images
    assert image.region == (50, 20, 110, 90) and image.pixels.shape == (70, 60)


def test_multiframe_us_representative_frame(tmp_path):
    ds = factory.make_us(48, 64, frames=5)
    (image,) = ingest_written(ds, tmp_path).images
    assert image.frame_number == 3                                   # middle frame
    np.testing.assert_array_equal(image.pixels, frame_to_gray(ds, 2))
    ds = factory.make_us(48, 64, frames=5, representative_frame=2)
    (image,) = ingest_written(ds, tmp_path).images
    assert image.frame_number == 2
    np.testing.assert_array_equal(image.pixels, frame_to_gray(ds, 1))
    assert not np.array_equal(image.pixels, frame_to_gray(ds, 2))     # frames really differ


def test_multiframe_us_all_frames_capped(tmp_path):
    ds = factory.encode(factory.make_us(48, 64, frames=5, with_regions=True), RLELossless)
    rules = dataclasses.replace(RULES, us_frames="all")
    outcome = ingest_written(ds, tmp_path, rules)
    assert [im.frame_number for im in outcome.images] == [1, 2, 3, 4, 5]
    x0, y0, x1, y1 = factory.us_region(48, 64)
    for im in outcome.images:
        assert im.region == (x0, y0, x1, y1)
        np.testing.assert_array_equal(im.pixels, frame_to_gray(ds, im.frame_number - 1)[y0:y1, x0:x1])
    outcome = ingest_written(ds, tmp_path, dataclasses.replace(rules, max_frames=3))
    assert [im.frame_number for im in outcome.images] == [1, 2, 3]


def test_invalid_frame_rule_is_an_error_not_a_crash(tmp_path):
    outcome = ingest_written(factory.make_us(32, 32), tmp_path, dataclasses.replace(RULES, us_frames="some"))
    assert outcome.status is Status.ERROR and "us_frames" in outcome.reason


# ------------------------------------------------------------------------------------- transfer syntaxes

@pytest.mark.parametrize("ts", [ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian,
                                RLELossless, JPEG2000Lossless, JPEG2000,
                                pytest.param(JPEGBaseline8Bit, marks=needs_dcmtk),
                                pytest.param(JPEGExtended12Bit, marks=needs_dcmtk)],
                         ids=lambda ts: ts.keyword)
def test_files_in_every_family_of_transfer_syntax_ingest(ts, tmp_path):
    us = factory.make_us(64, 96, photometric="RGB", with_regions=True)
    mg = factory.make_mg(128, 100, bits_stored=8 if ts == JPEGBaseline8Bit else 12)
    for source, name in ((us, "us.dcm"), (mg, "mg.dcm")):
        outcome = ingest_written(factory.encode(source, ts), tmp_path, name=name)
        assert outcome.status is Status.OK, outcome.reason
        (image,) = outcome.images
        (reference,) = ingest_written(source, tmp_path, name="ref.dcm").images
        assert image.region == reference.region
        assert np.abs(image.pixels - reference.pixels).mean() < 0.035


# ---------------------------------------------------------------------------------------------- failures

@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.7, 0.99])
@pytest.mark.parametrize("ts", [pydicom.uid.ExplicitVRLittleEndian, JPEG2000Lossless], ids=lambda ts: ts.keyword)
def test_truncated_file_is_an_error_naming_the_file(fraction, ts, tmp_path):
    path = factory.write(factory.encode(factory.make_mg(128, 100), ts), tmp_path / "whole.dcm")
    cut = factory.truncated_copy(path, tmp_path / "cut.dcm", fraction)
    outcome = ingest(cut, RULES)
    assert outcome.status is Status.ERROR and not outcome.images
    assert str(cut) in outcome.reason
    assert "truncated" in outcome.reason or "no Pixel Data" in outcome.reason


def test_not_dicom_file_is_skipped_with_the_reason(tmp_path):
    path = factory.not_dicom_file(tmp_path / "notes.dcm")
    outcome = ingest(path, RULES)
    assert outcome.status is Status.SKIPPED and str(path) in outcome.reason and "not a DICOM file" in outcome.reason
    assert outcome.dataset is None


@pytest.mark.parametrize("content, status", [(b"", Status.ERROR), (b"\x00" * 132, Status.SKIPPED),
                                             (b"\x00" * 128 + b"DICM" + b"\xff" * 40, Status.ERROR)])
def test_empty_and_broken_files_are_errors_other_files_skipped(content, status, tmp_path):
    """Empty (a failed copy?) or claiming DICOM ('DICM') but unreadable: an error; anything else is not DICOM."""
    path = tmp_path / "bad.dcm"
    path.write_bytes(content)
    outcome = ingest(path, RULES)
    assert outcome.status is status and str(path) in outcome.reason


def test_missing_path_and_directory_are_errors(tmp_path):
    assert ingest(tmp_path / "nope.dcm", RULES).status is Status.ERROR
    assert ingest(tmp_path, RULES).status is Status.ERROR


def test_undecodable_pixel_data_is_an_error_naming_file_and_codec(tmp_path):
    ds = factory.encode(factory.make_mg(128, 100), JPEG2000Lossless)
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 200])
    path = factory.write(ds, tmp_path / "broken.dcm")
    outcome = ingest(path, RULES)
    assert outcome.status is Status.ERROR and str(path) in outcome.reason
    assert "cannot decode pixel data" in outcome.reason and "JPEG 2000" in outcome.reason


def test_malformed_attributes_do_not_escape(tmp_path):
    ds = factory.make_mg(64, 50)
    ds.Rows = 0                                        # nonsense geometry
    outcome = ingest_written(ds, tmp_path)
    assert outcome.status is Status.ERROR


def test_dataset_without_file_meta_or_preamble(tmp_path):
    ds = factory.make_us(48, 64)
    in_memory = factory.fresh_copy(ds)
    del in_memory.file_meta
    outcome = ingest(in_memory, RULES, "c-store")
    assert outcome.status is Status.OK and outcome.source == "c-store"
    raw = tmp_path / "raw.dcm"                          # a bare implicit VR data set, as old exports write them
    pydicom.dcmwrite(raw, in_memory, implicit_vr=True, little_endian=True)
    outcome = ingest(raw, RULES)
    assert outcome.status is Status.OK, outcome.reason
    np.testing.assert_array_equal(outcome.images[0].pixels, frame_to_gray(ds, None))


def test_path_bytes_and_dataset_give_the_same_images(tmp_path):
    ds = factory.make_mg(64, 50, laterality="R")
    path = factory.write(ds, tmp_path / "mg.dcm")
    from_path = ingest(path, RULES)
    from_bytes = ingest(path.read_bytes(), RULES, "orthanc instance 1")
    from_dataset = ingest(pydicom.dcmread(path), RULES)
    assert (from_path.source, from_bytes.source, from_dataset.source) == (str(path), "orthanc instance 1", "dataset")
    for outcome in (from_bytes, from_dataset):
        assert outcome.status is Status.OK and outcome.images[0].laterality == "R"
        np.testing.assert_array_equal(outcome.images[0].pixels, from_path.images[0].pixels)
    cut = ingest(path.read_bytes()[:-200], RULES, "cut")
    assert cut.status is Status.ERROR and cut.reason.startswith("cut: truncated")
    assert ingest(b"", RULES).status is Status.ERROR


def test_source_dataset_is_left_untouched(tmp_path):
    ds = factory.make_mg(64, 50)
    before = ds.PixelData
    outcome = ingest(ds, RULES, "memory")
    assert outcome.status is Status.OK
    assert ds.PixelData == before and "PixelData" not in outcome.images[0].dataset


def test_logs_carry_uids_never_patient_identity(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="branet_pacs")
    study = factory.new_study(PatientName="DOE^JANE", PatientID="PID-424242")
    ok = factory.write(factory.make_mg(64, 50, study=study), tmp_path / "ok.dcm")
    skipped = factory.write(factory.make_ct(study=study), tmp_path / "ct.dcm")
    broken = factory.truncated_copy(factory.write(factory.make_us(48, 64, study=study), tmp_path / "us.dcm"),
                                    tmp_path / "cut.dcm", 0.5)
    outcomes = [ingest(p, RULES) for p in (ok, skipped, broken)]
    assert [o.status for o in outcomes] == [Status.OK, Status.SKIPPED, Status.ERROR]
    assert caplog.records, "ingest should log its decisions"
    assert "DOE" not in caplog.text and "PID-424242" not in caplog.text
    assert outcomes[1].dataset.SOPInstanceUID in caplog.text


def test_make_study_shares_patient_and_study(tmp_path):
    images = factory.make_study("MG", 3)
    assert len({ds.StudyInstanceUID for ds in images}) == 1
    assert len({ds.SeriesInstanceUID for ds in images}) == 1
    assert len({ds.SOPInstanceUID for ds in images}) == 3
    assert [ds.ImageLaterality for ds in images] == ["L", "R", "L"]
    outcomes = [ingest_written(ds, tmp_path, name=f"{i}.dcm") for i, ds in enumerate(images)]
    assert all(o.status is Status.OK for o in outcomes)
