"""Hand-made lesion descriptors: fixed length, independent of where the lesion sits and of its size in pixels, and
they see what they claim to (density against the surround, spicules)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from branet_pacs.imaging import lesion_descriptors as D


def _film(size: int = 400, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.45 + 0.03 * rng.normal(size=(size, size))).clip(0, 1).astype(np.float32)


def _mass(image: np.ndarray, cx: int, cy: int, radius: float, spicules: int = 0, gain: float = 0.3) -> np.ndarray:
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    r = np.hypot(xx - cx, yy - cy)
    out = image.copy()
    out[r <= radius] += gain
    if spicules:
        angle = np.arctan2(yy - cy, xx - cx)
        lines = (np.cos(spicules * angle) > 0.97) & (r > radius) & (r < 2.2 * radius)
        out[lines] += gain
    return out.clip(0, 1)


def test_length_and_finite() -> None:
    values = D.lesion_descriptors(_mass(_film(), 200, 200, 30), (170, 170, 230, 230))
    assert values.shape == (D.COUNT,) == (53,) and values.dtype == np.float32 and np.isfinite(values).all()


def test_same_lesion_elsewhere_or_at_another_pixel_size_gives_about_the_same_numbers() -> None:
    film = _mass(_film(), 120, 140, 30)
    here = D.lesion_descriptors(film, (90, 110, 150, 170))
    moved = D.lesion_descriptors(np.roll(film, (150, 130), axis=(0, 1)), (220, 260, 280, 320))
    np.testing.assert_allclose(moved, here, rtol=1e-4, atol=1e-4)
    smooth = _mass(_film(seed=2) * 0 + 0.45, 120, 140, 30)
    big = np.asarray(Image.fromarray(smooth).resize((800, 800), Image.BILINEAR), np.float32)   # half the pixel size
    small, doubled = D.lesion_descriptors(smooth, (90, 110, 150, 170)), D.lesion_descriptors(big, (180, 220, 300, 340))
    lesion_mean, lesion_median, ring_mean = 0, 3, 5
    for index in (lesion_mean, lesion_median, ring_mean):
        assert abs(doubled[index] - small[index]) < 0.05


def test_a_dense_mass_stands_out_and_spicules_raise_tangential_energy() -> None:
    box = (170, 170, 230, 230)
    plain = D.lesion_descriptors(_film(), box)
    round_mass = D.lesion_descriptors(_mass(_film(), 200, 200, 30), box)
    spiculated = D.lesion_descriptors(_mass(_film(), 200, 200, 30, spicules=12), box)
    contrast, spicule_ratio = 7, 12        # (lesion - ring) / ring sd; tangential / radial gradient energy around it
    assert round_mass[contrast] > 3 and abs(plain[contrast]) < 1
    assert spiculated[spicule_ratio] > 1.3 * round_mass[spicule_ratio]


def test_a_box_at_the_image_edge_still_gives_numbers() -> None:
    film = _mass(_film(), 10, 10, 20)
    assert np.isfinite(D.lesion_descriptors(film, (0, 0, 30, 30))).all()
