"""frame_to_gray: every transfer syntax and photometric interpretation, LUT handling, 12-bit lossy JPEG."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import pixel_array
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from branet_pacs.dicom.pixels import PixelDecodeError, frame_to_gray, window

import dicom_factory as factory

LOSSLESS = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian,
            RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLossless, JPEGLosslessSV1)
LOSSY = (JPEGLSNearLossless, JPEG2000, JPEGExtended12Bit, JPEGBaseline8Bit)
# Mean / max absolute gray error allowed after lossy coding. Measured on these fixtures (dcmtk 3.6.7, openjpeg
# 2.5, CharLS): worst mean 0.024, worst max 0.22, both JPEG 2000 at 10:1 on speckled US; 12-bit MG stays < 0.02.
# A wrong colour conversion, byte order or bit depth gives mean errors > 0.1.
LOSSY_MEAN, LOSSY_MAX = 0.035, 0.35

needs_dcmtk = pytest.mark.skipif(not factory.dcmtk_available(), reason="dcmtk (dcmcjpeg) not installed")


def _marks(ts):
    return [needs_dcmtk] if ts in factory.DCMTK_ENCODED else []


def _ts_params(syntaxes):
    return [pytest.param(ts, id=ts.keyword or str(ts), marks=_marks(ts)) for ts in syntaxes]


@pytest.fixture(scope="module")
def mg12():
    return factory.make_mg(128, 100, bits_stored=12)


@pytest.fixture(scope="module")
def mg8():
    return factory.make_mg(128, 100, bits_stored=8)


@pytest.fixture(scope="module")
def us_gray():
    return factory.make_us(64, 96, with_regions=True)


@pytest.fixture(scope="module")
def us_rgb():
    return factory.make_us(64, 96, photometric="RGB", with_regions=True)


def _assert_close(gray, reference, lossy):
    assert gray.dtype == np.float32 and gray.shape == reference.shape
    assert 0.0 <= gray.min() and gray.max() <= 1.0
    diff = np.abs(gray - reference)
    if lossy:
        assert diff.mean() < LOSSY_MEAN and diff.max() < LOSSY_MAX, (diff.mean(), diff.max())
    else:
        assert diff.max() < 1e-6


# ----------------------------------------------------------------------------------------- transfer syntaxes

@pytest.mark.parametrize("ts", _ts_params(LOSSLESS + (JPEGLSNearLossless, JPEG2000, JPEGExtended12Bit)))
def test_12bit_mammogram_round_trips(ts, mg12):
    encoded = factory.encode(mg12, ts)
    assert encoded.file_meta.TransferSyntaxUID == ts
    assert encoded.BitsStored == 12
    _assert_close(frame_to_gray(encoded, None), frame_to_gray(mg12, None), lossy=ts in LOSSY)


@pytest.mark.parametrize("ts", _ts_params(factory.ALL_TRANSFER_SYNTAXES))
def test_8bit_grayscale_round_trips(ts, mg8, us_gray):
    for source in (mg8, us_gray):
        encoded = factory.encode(source, ts)
        _assert_close(frame_to_gray(encoded, None), frame_to_gray(source, None), lossy=ts in LOSSY)


@pytest.mark.parametrize("ts", _ts_params(factory.ALL_TRANSFER_SYNTAXES))
def test_rgb_round_trips(ts, us_rgb):
    encoded = factory.encode(us_rgb, ts)
    expected_photometric = {JPEG2000Lossless: "YBR_RCT", JPEG2000: "YBR_ICT", JPEGBaseline8Bit: "YBR_FULL_422",
                            JPEGExtended12Bit: "YBR_FULL_422"}.get(ts, "RGB")
    assert encoded.PhotometricInterpretation == expected_photometric
    _assert_close(frame_to_gray(encoded, None), frame_to_gray(us_rgb, None), lossy=ts in LOSSY)


@pytest.mark.parametrize("color, photometric", [("ybr444", "YBR_FULL"), ("rgb", "RGB")])
@needs_dcmtk
def test_jpeg_baseline_colour_spaces(color, photometric, us_rgb):
    encoded = factory.encode(us_rgb, JPEGBaseline8Bit, color=color)
    assert encoded.PhotometricInterpretation == photometric
    _assert_close(frame_to_gray(encoded, None), frame_to_gray(us_rgb, None), lossy=True)


@pytest.mark.parametrize("ts", _ts_params((RLELossless, JPEG2000Lossless, JPEGLSLossless, JPEGBaseline8Bit)))
def test_multiframe_frames_decode_individually(ts):
    source = factory.make_us(48, 64, frames=4)
    encoded = factory.encode(source, ts)
    frames = pixel_array(source)
    for index in range(4):
        expected = frames[index].astype(np.float32)
        expected = (expected - expected.min()) / (expected.max() - expected.min())
        _assert_close(frame_to_gray(encoded, index), expected, lossy=ts in LOSSY)
    with pytest.raises(PixelDecodeError, match="out of range"):
        frame_to_gray(encoded, 4)


# --------------------------------------------------------------------------------------- 12-bit lossy JPEG

@needs_dcmtk
@pytest.mark.parametrize("plugin", ["pylibjpeg", ""])
def test_12bit_lossy_jpeg_really_decodes(plugin, mg12):
    """Process 4 (12-bit DCT) is the classic mammography trap: Pillow cannot decode it and pydicom's gdcm plugin
    refuses it, so pylibjpeg-libjpeg must ("" = pydicom's own plugin order, what frame_to_gray uses)."""
    encoded = factory.encode(mg12, JPEGExtended12Bit)
    fragment = next(generate_frames(encoded.PixelData, number_of_frames=1))
    sof1 = fragment.find(b"\xff\xc1")
    assert sof1 > 0 and fragment[sof1 + 4] == 12, "not a 12-bit extended sequential JPEG stream"
    decoded = pixel_array(encoded, decoding_plugin=plugin).astype(np.int32)
    original = pixel_array(mg12).astype(np.int32)
    assert decoded.max() > 255                              # really 12-bit values, not an 8-bit rendering
    assert np.abs(decoded - original).mean() < 4.0          # a few 12-bit LSBs of coding error
    _assert_close(frame_to_gray(encoded, None), frame_to_gray(mg12, None), lossy=True)


# ------------------------------------------------------------------------------------------ grayscale LUTs

def test_full_range_window_maps_stored_values_linearly(mg12):
    stored = pixel_array(mg12).astype(np.float32)
    np.testing.assert_allclose(frame_to_gray(mg12, None), stored / 4095.0, atol=1e-5)


def test_monochrome1_is_inverted_so_dense_is_bright(mg12):
    mono1 = factory.make_mg(128, 100, photometric="MONOCHROME1")
    assert mono1.PhotometricInterpretation == "MONOCHROME1"
    assert not np.array_equal(pixel_array(mono1), pixel_array(mg12))      # stored inverted ...
    np.testing.assert_allclose(frame_to_gray(mono1, None), frame_to_gray(mg12, None), atol=1e-5)  # ... shown alike
    x0, y0, x1, y1 = factory.lesion_box(mono1)
    gray = frame_to_gray(mono1, None)
    assert gray[(y0 + y1) // 2, (x0 + x1) // 2] > gray[5:20, 5:20].mean() + 0.3   # lesion bright, air dark


def test_presentation_lut_inverse_inverts_monochrome2(mg12):
    inverse = factory.make_mg(128, 100, PresentationLUTShape="INVERSE")
    np.testing.assert_allclose(frame_to_gray(inverse, None), 1.0 - frame_to_gray(mg12, None), atol=1e-5)


def test_signed_data_matches_unsigned(mg12):
    signed = factory.make_mg(128, 100, signed=True)
    assert signed.PixelRepresentation == 1 and pixel_array(signed).min() < 0
    np.testing.assert_allclose(frame_to_gray(signed, None), frame_to_gray(mg12, None), atol=1e-5)


def test_16bit_data():
    mg16 = factory.make_mg(96, 80, bits_stored=16)
    stored = pixel_array(mg16).astype(np.float32)
    assert stored.max() > 4096
    np.testing.assert_allclose(frame_to_gray(mg16, None), stored / 65535.0, atol=1e-5)


def test_12_bits_in_16_without_window_fill_the_range():
    mg = factory.make_mg(96, 80, bits_stored=12, window=False)
    stored = pixel_array(mg).astype(np.float32)
    gray = frame_to_gray(mg, None)
    assert gray.min() == 0.0 and gray.max() == 1.0
    np.testing.assert_allclose(gray, (stored - stored.min()) / (stored.max() - stored.min()), atol=1e-6)


def test_bits_above_bits_stored_are_ignored(mg12):
    dirty = factory.make_mg(128, 100)
    words = np.frombuffer(dirty.PixelData, dtype="<u2") | 0xF000     # e.g. overlay bits in the high nibble
    dirty.PixelData = words.tobytes()
    np.testing.assert_allclose(frame_to_gray(dirty, None), frame_to_gray(mg12, None), atol=1e-6)


def test_rescale_slope_and_intercept_are_applied():
    plain = factory.make_mg(96, 80, window=False)
    negative = factory.make_mg(96, 80, window=False, RescaleSlope=-2, RescaleIntercept=500)
    np.testing.assert_allclose(frame_to_gray(negative, None), 1.0 - frame_to_gray(plain, None), atol=1e-6)
    # the window is in modality (rescaled) units: shifting both by the intercept changes nothing
    shifted = factory.make_mg(96, 80, RescaleIntercept=-1000, WindowCenter=1048.0)
    np.testing.assert_allclose(frame_to_gray(shifted, None), frame_to_gray(factory.make_mg(96, 80), None),
                               atol=1e-6)


def test_modality_lut_sequence_is_applied():
    mg = factory.make_mg(96, 80, window=False)
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.ModalityLUTType = "US"
    item.LUTData = (4095 - np.arange(4096)).astype("<u2").tolist()     # an inverting LUT
    mg.ModalityLUTSequence = pydicom.Sequence([item])
    del mg.RescaleSlope, mg.RescaleIntercept, mg.RescaleType
    plain = factory.make_mg(96, 80, window=False)
    np.testing.assert_allclose(frame_to_gray(mg, None), 1.0 - frame_to_gray(plain, None), atol=1e-6)


def test_voi_lut_sequence_takes_precedence_over_window(mg12):
    with_lut = factory.make_mg(128, 100, voi_lut=True, WindowCenter=100.0, WindowWidth=10.0)
    stored = pixel_array(with_lut).astype(np.float32)
    np.testing.assert_allclose(frame_to_gray(with_lut, None), stored / 4095.0, atol=1e-3)


def test_narrow_window_clips():
    mg = factory.make_mg(96, 80, WindowCenter=1000.0, WindowWidth=200.0)
    stored = pixel_array(mg).astype(np.float32)
    gray = frame_to_gray(mg, None)
    assert np.all(gray[stored <= 899] == 0.0) and np.all(gray[stored >= 1100] == 1.0)
    inside = (stored > 900) & (stored < 1099)
    np.testing.assert_allclose(gray[inside], (stored[inside] - 999.5) / 199.0 + 0.5, atol=1e-5)


def test_window_functions_follow_ps3_3():
    values = np.array([0.0, 100.0, 200.0], dtype=np.float32)
    np.testing.assert_allclose(window(values, 100.0, 101.0, "LINEAR"), [0.0, 0.5 + 0.5 / 100, 1.0], atol=1e-6)
    np.testing.assert_allclose(window(values, 100.0, 100.0, "LINEAR_EXACT"), [0.0, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(window(values, 100.0, 100.0, "SIGMOID"),
                               1.0 / (1.0 + np.exp(-4.0 * (values - 100.0) / 100.0)), atol=1e-6)
    assert window(values, 100.0, 0.5, "LINEAR") is None      # LINEAR needs width >= 1


# ----------------------------------------------------------------------------------------- photometrics

@pytest.mark.parametrize("photometric", ["MONOCHROME1", "RGB", "YBR_FULL", "YBR_FULL_422"])
def test_photometrics_give_the_monochrome2_picture(photometric):
    reference = frame_to_gray(factory.make_us(64, 96), None)
    other = factory.make_us(64, 96, photometric=photometric)
    assert other.PhotometricInterpretation == photometric
    tolerance = 1e-6 if photometric in ("MONOCHROME1", "RGB") else 2.5 / 255
    np.testing.assert_allclose(frame_to_gray(other, None), reference, atol=tolerance)


def test_palette_colour_uses_the_luts():
    ds = factory.make_us(64, 96, photometric="PALETTE COLOR")
    luminance = factory.palette_to_rgb_gray(pixel_array(ds))
    expected = (luminance - luminance.min()) / (luminance.max() - luminance.min())
    np.testing.assert_allclose(frame_to_gray(ds, None), expected, atol=1e-5)


def test_colour_ui_becomes_luminance(us_rgb):
    """The red colour bar left of the image region is gray 0.299*200+0.587*40+0.114*40 after conversion."""
    gray = frame_to_gray(us_rgb, None)
    rgb = pixel_array(us_rgb).astype(np.float32)
    lum = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    np.testing.assert_allclose(gray, (lum - lum.min()) / (lum.max() - lum.min()), atol=1e-5)
    x0, y0, _, _ = factory.us_region(64, 96)
    assert gray[y0 + 2, 0] == pytest.approx((0.299 * 200 + 0.587 * 40 + 0.114 * 40) / 255.0, abs=1e-4)


@pytest.mark.parametrize("ts", _ts_params((RLELossless, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian)))
def test_palette_colour_through_transfer_syntaxes(ts):
    ds = factory.make_us(64, 96, photometric="PALETTE COLOR")
    _assert_close(frame_to_gray(factory.encode(ds, ts), None), frame_to_gray(ds, None), lossy=False)


# ---------------------------------------------------------------------------------------------- failures

def test_corrupt_compressed_stream_raises_decode_error(mg12):
    encoded = factory.encode(mg12, JPEG2000Lossless)
    fragment = next(generate_frames(encoded.PixelData, number_of_frames=1))
    encoded.PixelData = encapsulate([fragment[:40] + b"\x00" * 64])
    with pytest.raises(PixelDecodeError, match="JPEG 2000"):
        frame_to_gray(encoded, None)


def test_short_native_pixel_data_raises_decode_error(mg12):
    short = factory.make_mg(128, 100)
    short.PixelData = short.PixelData[:1000]
    with pytest.raises(PixelDecodeError, match="cannot decode"):
        frame_to_gray(short, None)


def test_enhanced_functional_group_window_and_rescale_are_used(mg12):
    """Enhanced objects (e.g. Breast Projection X-Ray) carry rescale and window in functional groups."""
    enhanced = factory.make_mg(128, 100, WindowCenter=None, WindowWidth=None, VOILUTFunction=None,
                               RescaleSlope=None, RescaleIntercept=None, RescaleType=None)
    voi, transform = pydicom.Dataset(), pydicom.Dataset()
    voi.WindowCenter, voi.WindowWidth = 2048.0, 4096.0
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1.0, 0.0, "US"
    shared = pydicom.Dataset()
    shared.FrameVOILUTSequence = pydicom.Sequence([voi])
    shared.PixelValueTransformationSequence = pydicom.Sequence([transform])
    enhanced.SharedFunctionalGroupsSequence = pydicom.Sequence([shared])
    np.testing.assert_allclose(frame_to_gray(enhanced, None), frame_to_gray(mg12, None), atol=1e-6)
    # a per-frame window wins over the shared one
    per_frame_voi = pydicom.Dataset()
    per_frame_voi.WindowCenter, per_frame_voi.WindowWidth = 1000.0, 200.0
    frame = pydicom.Dataset()
    frame.FrameVOILUTSequence = pydicom.Sequence([per_frame_voi])
    enhanced.PerFrameFunctionalGroupsSequence = pydicom.Sequence([frame])
    narrow = factory.make_mg(128, 100, WindowCenter=1000.0, WindowWidth=200.0)
    np.testing.assert_allclose(frame_to_gray(enhanced, None), frame_to_gray(narrow, None), atol=1e-6)


def test_video_transfer_syntax_is_a_clear_decode_error():
    """MPEG-2 / H.264 / HEVC cine loops have no decoder in pydicom: a named failure, not a crash."""
    ds = factory.make_us(48, 64, frames=2)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG4HP41
    ds.PixelData = encapsulate([b"\x00\x00\x00\x01" + b"\x00" * 60])
    with pytest.raises(PixelDecodeError, match="MPEG-4 AVC/H.264"):
        frame_to_gray(ds, 0)
