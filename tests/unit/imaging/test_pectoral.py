"""The pectoral muscle on MLO views: found where a muscle-like bright corner triangle is, mirrored with the breast,
absent on a view without one, and taken out of where the MG detector looks; the view read from DICOM."""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from branet_pacs.dicom.derived import view_position
from branet_pacs.imaging.breast import breast_mask, chest_wall_on_left, detection_region, pectoral_region


def _mlo(muscle: bool = True, seed: int = 0, size: tuple[int, int] = (600, 400)) -> tuple[np.ndarray, np.ndarray]:
    """A left-chest-wall breast (half ellipse against the left edge) with, optionally, a bright triangle in its
    upper chest-wall corner; returns (image, true muscle)."""
    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    breast = ((xx / (0.8 * w)) ** 2 + ((yy - h / 2) / (0.48 * h)) ** 2) <= 1
    image = np.where(breast, 0.45 + 0.04 * rng.normal(size=(h, w)), 0.02).astype(np.float32)
    truth = np.zeros((h, w), dtype=bool)
    if muscle:
        truth = breast & (xx < 0.45 * w * (1 - (yy - 0.03 * h) / (0.5 * h)))
        image[truth] += 0.3
    return np.clip(image, 0, 1), truth


def test_the_muscle_triangle_is_found_inside_its_true_extent_and_mirrors_with_the_breast() -> None:
    image, truth = _mlo()
    mask = breast_mask(image)
    found = pectoral_region(image, mask)
    assert chest_wall_on_left(mask)
    assert found.sum() > 0.4 * truth.sum()                  # most of the muscle, at 80 % of its width
    assert (found & ~truth).sum() < 0.05 * found.sum()      # and not past it
    assert not found[int(0.56 * image.shape[0]):].any()     # nothing below where the muscle ends (53 %)
    mirrored = pectoral_region(image[:, ::-1], mask[:, ::-1])
    assert not chest_wall_on_left(mask[:, ::-1])
    np.testing.assert_array_equal(mirrored, found[:, ::-1])


def test_no_muscle_no_region_and_only_oblique_views_lose_it() -> None:
    plain, _ = _mlo(muscle=False)
    assert not pectoral_region(plain, breast_mask(plain)).any()
    image, truth = _mlo()
    mlo, cc = detection_region(image, "MG", "MLO"), detection_region(image, "MG", "CC")
    np.testing.assert_array_equal(cc, breast_mask(image))
    assert (cc & ~mlo).sum() > 0.4 * truth.sum() and not (mlo & ~cc).any()
    assert detection_region(image, "US", "MLO") is None


def test_view_from_view_code_sequence_else_view_position() -> None:
    ds = Dataset()
    assert view_position(ds) is None
    ds.ViewPosition = "CC"
    assert view_position(ds) == "CC"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "399368009", "SCT", "medio-lateral oblique"
    ds.ViewCodeSequence = pydicom.Sequence([code])
    assert view_position(ds) == "MLO"
