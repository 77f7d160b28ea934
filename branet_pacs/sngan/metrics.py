"""FID and KID as clean-fid computes them, on features from `branet_pacs.sngan.features`.

FID (Heusel et al. 2017): ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)), with scipy's sqrtm and the usual
guard (add eps to the diagonals when the product is singular; drop a negligible imaginary part).
KID (Binkowski et al. 2018): the unbiased MMD^2 estimate with the polynomial kernel k(x, y) = (x.y / d + 1)^3,
averaged over random subsets of equal size (clean-fid: 100 subsets of at most 1000).
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import linalg

from branet_pacs.sngan.data import list_image_files, read_gray_uint8
from branet_pacs.sngan.features import FeatureExtractor, make_extractor

log = logging.getLogger(__name__)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need (n >= 2, d) features, got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    """scipy.linalg.sqrtm; non-finite entries (not an exception) signal a singular product, as in clean-fid."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # n < d makes the product singular; guarded below
        try:
            root = linalg.sqrtm(matrix)
        except (linalg.LinAlgError, ValueError):
            return np.full_like(matrix, np.nan)
    return np.asarray(root[0] if isinstance(root, tuple) else root)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (clean-fid / pytorch-fid formulation)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError("mean vectors / covariances of different shapes")
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        log.warning("FID: singular covariance product; adding %g to the diagonals", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))} too large")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    mu1, s1 = feature_statistics(real)
    mu2, s2 = feature_statistics(fake)
    return frechet_distance(mu1, s1, mu2, s2)


def polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between samples x (m, d) and y (m, d) with k(a, b) = (a.b / d + 1)^3 (equal sizes)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    m, d = x.shape
    if y.shape != (m, d) or m < 2:
        raise ValueError(f"need two (m >= 2, d) samples of equal shape, got {x.shape} and {y.shape}")
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.sum() / (m * m))


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, num_subsets: int = 100,
                              max_subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the unbiased polynomial MMD^2 over `num_subsets` random equal-size subsets (no replacement)."""
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    m = min(len(real), len(fake), max_subset_size)
    if m < 2:
        raise ValueError("KID needs at least two images in each set")
    rng = np.random.default_rng(seed)
    values = np.array([polynomial_mmd2_unbiased(fake[rng.choice(len(fake), m, replace=False)],
                                                real[rng.choice(len(real), m, replace=False)])
                       for _ in range(num_subsets)])
    return float(values.mean()), float(values.std())


@dataclass(frozen=True)
class ScoreResult:
    extractor: str
    fid: float
    kid_mean: float
    kid_std: float
    n_real: int
    n_fake: int
    feature_dim: int
    kid_subset_size: int
    kid_subsets: int

    def summary(self) -> str:
        return (f"FID[{self.extractor}] = {self.fid:.3f}   KID[{self.extractor}] = {self.kid_mean:.5f} "
                f"± {self.kid_std:.5f}   (real {self.n_real}, fake {self.n_fake}, {self.feature_dim}-d features, "
                f"KID {self.kid_subsets} subsets of {self.kid_subset_size})")

    def to_dict(self) -> dict[str, object]:
        values = asdict(self)
        values[f"FID[{self.extractor}]"] = self.fid
        values[f"KID[{self.extractor}]"] = self.kid_mean
        return values


def score_features(real: np.ndarray, fake: np.ndarray, extractor: str, kid_subsets: int = 100,
                   kid_subset_size: int = 1000, seed: int = 0) -> ScoreResult:
    fid = fid_from_features(real, fake)
    kid_mean, kid_std = kernel_inception_distance(real, fake, kid_subsets, kid_subset_size, seed)
    return ScoreResult(extractor, fid, kid_mean, kid_std, len(real), len(fake), int(np.asarray(real).shape[1]),
                       min(len(real), len(fake), kid_subset_size), kid_subsets)


def _spread_subset(files: list[Path], max_images: int | None) -> list[Path]:
    """At most max_images files, evenly spread over the sorted list (deterministic)."""
    if max_images is None or len(files) <= max_images:
        return files
    picks = np.linspace(0, len(files) - 1, max_images).round().astype(int)
    return [files[i] for i in picks]


def folder_features(folder: str | Path, extractor: FeatureExtractor, max_images: int | None = None,
                    cache_dir: str | Path | None = None, batch_size: int = 16) -> np.ndarray:
    """Features of every PNG under folder (class sub-folders or flat), cached by file contents when asked."""
    files = _spread_subset([p for p, _ in list_image_files(folder)], max_images)
    cache_file = None
    if cache_dir is not None:
        digest = hashlib.sha256(extractor.identity.encode())
        for path in files:
            digest.update(path.name.encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        cache_file = Path(cache_dir) / f"{extractor.name.replace(':', '_')}-{digest.hexdigest()[:20]}.npz"
        if cache_file.is_file():
            with np.load(cache_file, allow_pickle=False) as cached:
                return cached["features"]
    images = np.stack([read_gray_uint8(p) for p in files])
    log.info("extracting %s features of %d images from %s", extractor.name, len(files), folder)
    features = extractor(images, batch_size=batch_size)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache_file, features=features, files=np.array([str(p) for p in files]))
    return features


def score_folders(real: str | Path, fake: str | Path, features: str = "litemedsam",
                  device: torch.device | str = "cpu", kid_subsets: int = 100, kid_subset_size: int = 1000,
                  max_images: int | None = None, cache_dir: str | Path | None = None, batch_size: int = 16,
                  seed: int = 0) -> ScoreResult:
    """FID[extractor] and KID[extractor] between two folders of 8-bit ROI PNGs."""
    extractor = make_extractor(features, device)
    real_features = folder_features(real, extractor, max_images, cache_dir, batch_size)
    fake_features = folder_features(fake, extractor, max_images, cache_dir, batch_size)
    result = score_features(real_features, fake_features, extractor.name, kid_subsets, kid_subset_size, seed)
    log.info("%s", json.dumps(result.to_dict()))
    return result
