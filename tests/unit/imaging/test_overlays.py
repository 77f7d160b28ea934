"""Caliper-like marks: found on a speckled image, painted out, tissue left alone."""

import numpy as np
from scipy import ndimage

from branet_pacs.imaging.overlays import graphic_marks, paint_out, without_marks


def _speckle(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(0.3, 0.12, (120, 160)), 1.0).clip(0, 1).astype(np.float32)


def _cross(image: np.ndarray, cy: int, cx: int, value: float = 226 / 255) -> np.ndarray:
    """A BUS-UCLM caliper: four 2-pixel arms of one grey level around a gap."""
    image = image.copy()
    image[cy - 7:cy - 1, cx:cx + 2] = value
    image[cy + 2:cy + 7, cx:cx + 2] = value
    image[cy:cy + 2, cx - 7:cx - 1] = value
    image[cy:cy + 2, cx + 3:cx + 8] = value
    return image


def test_caliper_crosses_are_found_and_painted_out():
    tissue = _speckle()
    marked = _cross(_cross(tissue, 40, 50), 80, 110)
    marks = graphic_marks(marked)
    assert ndimage.label(marks)[1] == 8                          # two crosses, four arms each
    assert marks.sum() == int(((marked != tissue)).sum())        # exactly the drawn pixels
    painted = paint_out(marked, marks)
    assert painted[marks].max() < 0.7                            # the bright strokes are gone
    assert np.abs(painted[marks] - tissue[marks]).mean() < 0.1   # close to the tissue under them
    untouched = ~ndimage.binary_dilation(marks, iterations=1)
    np.testing.assert_array_equal(painted[untouched], marked[untouched])


def test_tissue_and_bright_blobs_are_not_marks():
    image = _speckle(1)
    image[60:64, 60:64] = 1.0                                    # a bright square: not thin
    yy, xx = np.mgrid[:120, :160]
    image[(yy - 30) ** 2 + (xx - 120) ** 2 < 4] += 0.5           # a small bright speckled spot: not flat
    image = image.clip(0, 1)
    assert not graphic_marks(image).any()
    np.testing.assert_array_equal(without_marks(image), image)
