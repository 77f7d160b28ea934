"""The shared ROI and geometry code (`branet_pacs.imaging`), with hand-computed answers."""

import numpy as np
import pytest

from branet_pacs.imaging.geometry import box_iou, box_mask, mask_box, mask_outline, square_crop
from branet_pacs.imaging.roi import ROI_SIZE, extract_roi, roi_to_uint8, roi_window, uint8_to_roi


def test_roi_window_is_square_and_widened():
    assert roi_window((10, 20, 50, 40), margin=0.25) == (0, 0, 60, 60)   # side 40 * 1.5, centred on (30, 30)


def test_extract_roi_shape_range_and_content():
    image = np.zeros((200, 300), np.float32)
    image[80:120, 130:170] = 1.0                   # bright square lesion
    roi = extract_roi(image, (130, 80, 170, 120), margin=0.5)
    assert roi.shape == (ROI_SIZE, ROI_SIZE) and roi.dtype == np.float32
    assert roi.min() >= -1.0 and roi.max() <= 1.0
    assert roi[64, 64] > 0.9 and roi[2, 2] < -0.9  # lesion in the middle, background at the corner


def test_extract_roi_pads_outside_the_image():
    image = np.ones((50, 50), np.float32) * 0.5
    image[0:10, 0:10] = 1.0
    roi = extract_roi(image, (0, 0, 10, 10), margin=1.0)  # window (-10,-10,20,20): the top-left quarter is padding
    assert roi[5, 5] == pytest.approx(-1.0)


def test_roi_uint8_round_trip():
    roi = np.linspace(-1, 1, ROI_SIZE * ROI_SIZE, dtype=np.float32).reshape(ROI_SIZE, ROI_SIZE)
    assert np.abs(uint8_to_roi(roi_to_uint8(roi)) - roi).max() <= 1 / 127.5


def test_mask_box_and_outline():
    mask = np.zeros((60, 80), bool)
    mask[10:30, 20:50] = True
    assert mask_box(mask) == (20, 10, 50, 30)
    assert mask_box(np.zeros((5, 5), bool)) is None
    outline = mask_outline(mask)
    assert np.array_equal(outline[0], outline[-1])
    assert outline[:, 0].min() >= 19 and outline[:, 0].max() <= 50
    assert outline[:, 1].min() >= 9 and outline[:, 1].max() <= 30


def test_square_crop_is_centred_zero_padded_and_says_where_it_lies():
    image = np.arange(1, 1 + 20 * 30, dtype=np.float32).reshape(20, 30)
    crop, (left, top) = square_crop(image, 15.0, 10.0, 8)
    assert crop.shape == (8, 8) and (left, top) == (11, 6)
    np.testing.assert_array_equal(crop, image[6:14, 11:19])
    corner, (left, top) = square_crop(image, 1.0, 2.0, 6)        # hangs over the top-left corner
    assert (left, top) == (-2, -1)
    np.testing.assert_array_equal(corner[1:, 2:], image[0:5, 0:4])
    assert not corner[0].any() and not corner[:, :2].any()


def test_box_mask_fills_the_box_clipped_to_the_image():
    mask = box_mask((10, 12), (3, 2, 7, 5))
    assert mask.sum() == 4 * 3 and mask_box(mask) == (3, 2, 7, 5)
    assert mask_box(box_mask((10, 12), (-4, -1, 2, 30))) == (0, 0, 2, 10)


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def _breast_with_mass(mass_level: float, gain: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """A 'breast' on a black background: fatty tissue around 0.25 where the round mass of `mass_level` sits, dense
    glandular tissue around 0.75 beside it."""
    rng = np.random.default_rng(0)
    image = np.zeros((300, 400), np.float32)
    image[20:280, 0:250] = 0.25 + rng.normal(0, 0.03, (260, 250)).astype(np.float32)
    image[20:280, 250:350] = 0.75 + rng.normal(0, 0.03, (260, 100)).astype(np.float32)
    yy, xx = np.mgrid[:300, :400]
    image[(yy - 150) ** 2 + (xx - 150) ** 2 < 30 ** 2] = mass_level
    breast = image > 0
    image[breast] = image[breast] * gain + offset
    return image.clip(0.0, 1.0)


def test_tissue_window_keeps_how_dense_a_mass_is_against_the_breast() -> None:
    from branet_pacs.imaging.roi import window_levels

    box = (120, 120, 180, 180)
    faint, dense = _breast_with_mass(0.45), _breast_with_mass(0.8)
    # each crop stretched to itself: both masses come out equally white
    own = [extract_roi(image, box, 0.5)[54:74, 54:74].mean() for image in (faint, dense)]
    assert abs(own[0] - own[1]) < 0.05
    # on the image's tissue window the denser mass is brighter
    tissue = [extract_roi(image, box, 0.5, window_levels(image, "tissue"))[54:74, 54:74].mean()
              for image in (faint, dense)]
    assert tissue[1] > tissue[0] + 0.3


def test_tissue_window_follows_each_image_gain_and_offset() -> None:
    from branet_pacs.imaging.roi import tissue_levels, window_levels

    box = (120, 120, 180, 180)
    plain, brighter = _breast_with_mass(0.5), _breast_with_mass(0.5, gain=1.1, offset=0.02)
    lo, hi = tissue_levels(plain)
    assert 0.15 < lo < 0.25 and 0.75 < hi < 0.9
    rois = [extract_roi(image, box, 0.5, window_levels(image, "tissue")) for image in (plain, brighter)]
    np.testing.assert_allclose(rois[0], rois[1], atol=0.02)
    assert window_levels(plain, "roi") is None
    with pytest.raises(ValueError, match="unknown ROI window"):
        window_levels(plain, "fixed")
