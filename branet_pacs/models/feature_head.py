"""A second opinion beside the ResNet18: logistic regression on LiteMedSAM's image embedding around the lesion.

LiteMedSAM already encodes every image for segmentation, so its embedding pooled inside the lesion mask and in a ring
around it (`segmenter.pooled_embedding`, 512 numbers) comes at no extra encoder cost. A linear head on it ranks
lesions about as well as the CNN at another hospital and makes different mistakes; the classifier's p(malignant) is
the mean of the two in logit space (`combine`). Measured in docs/pipeline-eval/README.md ("Two ultrasound sites").

Stored as safetensors (no pickle): the standardisation (`mean`, `scale`) and the linear model (`coef`, `intercept`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from branet_pacs.models.errors import ModelUnavailable

FEATURES = "LiteMedSAM image embedding, mean inside the lesion mask and in a ring around it (512)"
DEFAULT_C = 0.003   # inverse L2 strength; chosen across sites (research/us_sites/sam_head_loso.py)


@dataclass(frozen=True)
class FeatureHead:
    mean: np.ndarray        # (d,)
    scale: np.ndarray       # (d,)
    coef: np.ndarray        # (d,)
    intercept: float

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, C: float = DEFAULT_C) -> "FeatureHead":
        """Standardise, then class-balanced L2 logistic regression (scikit-learn)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        features = np.asarray(features, dtype=np.float64)
        scaler = StandardScaler().fit(features)
        model = LogisticRegression(C=C, max_iter=5000, class_weight="balanced")
        model.fit(scaler.transform(features), np.asarray(labels))
        return cls(scaler.mean_.astype(np.float32), scaler.scale_.astype(np.float32),
                   model.coef_[0].astype(np.float32), float(model.intercept_[0]))

    def predict(self, features: np.ndarray) -> np.ndarray:
        """p(malignant), shape (n,), for features (n, d)."""
        features = np.atleast_2d(np.asarray(features, dtype=np.float32))
        if features.shape[1] != self.coef.shape[0]:
            raise ValueError(f"feature head expects {self.coef.shape[0]} features, got {features.shape[1]}")
        z = ((features - self.mean) / self.scale) @ self.coef + self.intercept
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file({"mean": self.mean, "scale": self.scale, "coef": self.coef,
                   "intercept": np.array([self.intercept], dtype=np.float32)}, str(path),
                  metadata={"features": FEATURES, "model": "standardise + logistic regression"})

    @classmethod
    def load(cls, path: str | Path) -> "FeatureHead":
        from safetensors.numpy import load_file

        try:
            tensors = load_file(str(path))
            return cls(tensors["mean"], tensors["scale"], tensors["coef"], float(tensors["intercept"][0]))
        except Exception as exc:  # safetensors raises its own error types for malformed files
            raise ModelUnavailable(f"cannot read feature head {path}: {exc}") from exc


def combine(p_cnn: np.ndarray, p_head: np.ndarray) -> np.ndarray:
    """The mean of two probabilities in logit space (a product of experts with equal weight)."""
    def logit(p: np.ndarray) -> np.ndarray:
        p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))

    return (1.0 / (1.0 + np.exp(-(logit(p_cnn) + logit(p_head)) / 2))).astype(np.float32)
