"""Ingest against broken and hostile input: every case is an outcome with a reason naming the rule, never a crash,
never a silent skip, never garbage analysed as an image (#13)."""

from __future__ import annotations

import os

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGExtended12Bit

from branet_pacs.config import IngestRules
from branet_pacs.dicom.ingest import ingest
from branet_pacs.dicom.pixels import decode_frame
from branet_pacs.types import Status

import dicom_factory as factory

RULES = IngestRules()
needs_dcmtk = pytest.mark.skipif(not factory.dcmtk_available(), reason="dcmtk (dcmcjpeg, dcmdjpeg) not installed")


@pytest.mark.parametrize("keyword, tag", [("SOPInstanceUID", "0008,0018"), ("StudyInstanceUID", "0020,000D"),
                                          ("SeriesInstanceUID", "0020,000E"), ("SOPClassUID", "0008,0016")])
def test_a_missing_identifying_uid_is_an_error_naming_it(keyword, tag, tmp_path):
    ds = factory.make_us(48, 64)
    delattr(ds, keyword)
    for source in (ds, factory.write(ds, tmp_path / "in.dcm")):
        outcome = ingest(source, RULES)
        assert outcome.status is Status.ERROR and f"missing required attribute {keyword} ({tag})" in outcome.reason


def test_frames_too_large_or_too_many_are_refused_before_decoding():
    huge = factory.make_us(48, 64)
    huge.Rows, huge.Columns = 65535, 65535                 # the pixel data is far too short: never decoded
    outcome = ingest(huge, RULES)
    assert outcome.status is Status.ERROR and "ingest.max_frame_pixels = 100000000" in outcome.reason
    many = factory.make_us(48, 64)
    many.NumberOfFrames = 100000
    assert "ingest.max_instance_frames = 5000" in ingest(many, RULES).reason
    small = IngestRules(max_input_bytes=1000)
    assert "Pixel Data of 3072 bytes exceeds the limit ingest.max_input_bytes = 1000" in \
        ingest(factory.make_us(48, 64), small).reason


def test_a_deflate_bomb_is_refused_without_inflating_it(tmp_path):
    data = factory.deflate_bomb(300_000_000)               # ~300 kB that inflate to 300 MB
    assert len(data) < 1_000_000
    limits = IngestRules(max_input_bytes=100_000_000)
    for source in (data, tmp_path / "bomb.dcm"):
        if not isinstance(source, bytes):
            source.write_bytes(data)
        outcome = ingest(source, limits)
        assert outcome.status is Status.ERROR and "inflates to more than 100000000 bytes" in outcome.reason
    normal = factory.to_bytes(factory.make_us(32, 32, **{}))   # an ordinary file is not inflated at all
    assert ingest(normal, limits).status is Status.OK


def test_rescale_slope_zero_and_constant_images_are_not_analysed():
    zero = factory.make_mg(64, 50)
    zero.RescaleSlope = 0
    outcome = ingest(zero, RULES)
    assert outcome.status is Status.ERROR and "RescaleSlope (0028,1053) is 0" in outcome.reason
    for value in (0, 1234):
        flat = factory.make_mg(64, 50)
        flat.PixelData = np.full((64, 50), value, np.uint16).tobytes()
        outcome = ingest(flat, RULES)
        assert outcome.status is Status.SKIPPED and "no image content" in outcome.reason and not outcome.images


def test_a_one_pixel_image_is_a_reasoned_outcome():
    tiny = factory.make_us(48, 64)
    tiny.Rows = tiny.Columns = 1
    tiny.PixelData = b"\x80"
    assert ingest(tiny, RULES).status in (Status.SKIPPED, Status.ERROR)


def test_corrupted_jpeg2000_is_an_error_not_garbage():
    good = factory.encode(factory.make_mg(128, 100, seed=3), JPEG2000Lossless)
    frame = next(pydicom.encaps.generate_frames(good.PixelData, number_of_frames=1))
    corrupt = frame[:len(frame) // 3] + bytes(len(frame) - len(frame) // 3 - 2) + frame[-2:]   # zeroed tail
    bad = factory.from_bytes(factory.to_bytes(good))
    bad.PixelData = encapsulate([corrupt])
    outcome = ingest(bad, RULES)
    assert outcome.status is Status.ERROR and "codestream is corrupted (OpenJPEG refuses it)" in outcome.reason


@needs_dcmtk
def test_vendor_jpeg_extended_with_a_wrong_scan_header_decodes_like_the_correct_one():
    original = factory.make_mg(256, 200, seed=5)                      # 12-bit
    correct = factory.encode(original, JPEGExtended12Bit)
    quirky = factory.with_bad_scan_header(correct)
    with pytest.raises(Exception):                                    # the Python decoders all refuse it
        pydicom.pixels.pixel_array(quirky)
    reference = decode_frame(correct, None).astype(int)              # the same stream with Se = 63
    fallback = decode_frame(quirky, None).astype(int)                # through dcmtk's dcmdjpeg
    assert fallback.shape == reference.shape and np.abs(fallback - reference).max() <= 1   # IDCT rounding
    assert np.abs(fallback - original.pixel_array.astype(int)).mean() < 8                  # lossy, close
    outcome = ingest(quirky, RULES)
    assert outcome.status is Status.OK and outcome.images[0].pixels.std() > 0.01


def test_dicomdir_and_non_dicom_files_are_skipped_with_the_reason(tmp_path):
    image = factory.write(factory.make_us(48, 64), tmp_path / "img.dcm")
    directory = factory.dicomdir(tmp_path / "media", image)
    outcome = ingest(directory, RULES)
    assert outcome.status is Status.SKIPPED and "DICOMDIR" in outcome.reason
    png = tmp_path / "picture.dcm"
    from PIL import Image
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png, format="PNG")   # a PNG renamed .dcm
    outcome = ingest(png, RULES)
    assert outcome.status is Status.SKIPPED and "not a DICOM file" in outcome.reason


def test_links_that_lead_nowhere_are_errors_naming_the_link(tmp_path):
    dangling = tmp_path / "dangling.dcm"
    os.symlink(tmp_path / "gone.dcm", dangling)
    loop = tmp_path / "loop.dcm"
    os.symlink(loop, loop)
    for path in (dangling, loop):
        outcome = ingest(path, RULES)
        assert outcome.status is Status.ERROR and "symbolic link that cannot be resolved" in outcome.reason


def test_bad_character_set_and_deep_sequences_do_not_escape(tmp_path):
    charset = factory.make_us(48, 64)
    charset.SpecificCharacterSet = "ISO_IR 999"
    assert ingest(factory.write(charset, tmp_path / "cs.dcm"), RULES).status in (Status.OK, Status.ERROR)
    deep = factory.make_us(48, 64)
    item = deep
    for _ in range(60):
        inner = pydicom.Dataset()
        inner.CodeValue = "1"
        item.ContentSequence = pydicom.Sequence([inner])
        item = inner
    assert ingest(factory.write(deep, tmp_path / "deep.dcm"), RULES).status is Status.OK
