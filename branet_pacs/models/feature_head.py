"""A second opinion beside the ResNet18: logistic regression on LiteMedSAM's image embedding around the lesion.

LiteMedSAM already encodes every image for segmentation, so its embedding pooled inside the lesion mask and in a ring
around it (`segmenter.pooled_embedding`, 512 numbers) comes at no extra encoder cost. A linear head on it ranks
lesions about as well as the CNN at another hospital and makes different mistakes; the classifier's p(malignant) is
the two mixed in logit space (`combine`): the plain mean, or the CNN weight `branet train --cnn-weight auto` picked on
out-of-fold predictions (MG: the CNN is the weak part there). Measured in docs/pipeline-eval/README.md ("Two
ultrasound sites") and docs/mammography.md.

What the head reads is named by its inputs (manifest extra feature_head "inputs", in this order): "litemedsam"
(the pooled embedding, 512) and, optionally, "litemedsam-crop" (the same pooling with LiteMedSAM encoding a crop
around the lesion: the lesion at ~5x the resolution on a mammogram, one more encoder pass per lesion) and
"lesion-descriptors" (`imaging.lesion_descriptors`, 53 hand-made numbers on the lesion box: density against its
surround, edge, spicules, texture), one regression block each. `lesion_feature_rows` computes them for the pipeline
and for training alike.

Stored as safetensors (no pickle): the standardisation (`mean`, `scale`) and the linear blocks (`coef`, `intercept`,
`blocks`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from branet_pacs.imaging import lesion_descriptors
from branet_pacs.models.errors import ModelUnavailable
from branet_pacs.types import Box

if TYPE_CHECKING:
    from branet_pacs.models.segmenter import LiteMedSAMEmbedding, LiteMedSAMSegmenter

LITEMEDSAM = "litemedsam"
LITEMEDSAM_CROP = "litemedsam-crop"
LITEMEDSAM_CROP_STAGES = "litemedsam-crop-stages"
FEATURES = "LiteMedSAM image embedding, mean inside the lesion mask and in a ring around it (512)"
INPUTS = {LITEMEDSAM: FEATURES,
          LITEMEDSAM_CROP: "LiteMedSAM embedding of a square crop around the lesion (2.5x its box), mean inside its "
                           "mask and in a ring around it (512)",
          LITEMEDSAM_CROP_STAGES: "the maps of LiteMedSAM's TinyViT layers 2 and 3 (160 + 320 channels) on the same "
                                  "lesion crop, mean inside its mask and in a ring around it (960)",
          lesion_descriptors.NAME: lesion_descriptors.DESCRIPTION}
WIDTHS = {LITEMEDSAM: 512, LITEMEDSAM_CROP: 512, LITEMEDSAM_CROP_STAGES: 960,
          lesion_descriptors.NAME: lesion_descriptors.COUNT}
CROP_INPUTS = (LITEMEDSAM_CROP, LITEMEDSAM_CROP_STAGES)   # read from one encoder pass per lesion crop
DEFAULT_C = 0.003   # inverse L2 strength; chosen across sites (research/us_sites/sam_head_loso.py)


@dataclass(frozen=True)
class FeatureHead:
    """Standardisation + one logistic regression per input block (consecutive columns, `blocks` their widths);
    p(malignant) = the sigmoid of the blocks' mean logit. One block is the plain logistic head; with several, each
    input keeps its own regularisation and no block drowns the other (a LiteMedSAM block of 512 numbers beside 53
    descriptors: measured better than one regression on both, docs/mammography.md)."""

    mean: np.ndarray        # (d,)
    scale: np.ndarray       # (d,)
    coef: np.ndarray        # (d,) the blocks' coefficients, side by side
    intercept: np.ndarray   # (k,) one per block
    blocks: tuple[int, ...] = ()   # widths, summing to d; () = one block

    @property
    def widths(self) -> tuple[int, ...]:
        return self.blocks or (int(self.coef.shape[0]),)

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, C: float | Sequence[float] = DEFAULT_C,
            blocks: Sequence[int] = ()) -> "FeatureHead":
        """Standardise, then a class-balanced L2 logistic regression per block (scikit-learn); `C` one inverse
        strength for all blocks or one per block."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        features = np.asarray(features, dtype=np.float64)
        widths = tuple(blocks) or (features.shape[1],)
        strengths = [float(C)] * len(widths) if np.isscalar(C) else [float(c) for c in C]
        if sum(widths) != features.shape[1] or len(strengths) != len(widths):
            raise ValueError(f"blocks {widths} / C {strengths} do not fit {features.shape[1]} features")
        scaler = StandardScaler().fit(features)
        z = scaler.transform(features)
        coefs, intercepts, start = [], [], 0
        for width, strength in zip(widths, strengths):
            model = LogisticRegression(C=strength, max_iter=5000, class_weight="balanced")
            model.fit(z[:, start:start + width], np.asarray(labels))
            coefs.append(model.coef_[0])
            intercepts.append(model.intercept_[0])
            start += width
        return cls(scaler.mean_.astype(np.float32), scaler.scale_.astype(np.float32),
                   np.concatenate(coefs).astype(np.float32), np.array(intercepts, dtype=np.float32),
                   tuple(blocks) if len(widths) > 1 else ())

    def predict(self, features: np.ndarray) -> np.ndarray:
        """p(malignant), shape (n,), for features (n, d)."""
        features = np.atleast_2d(np.asarray(features, dtype=np.float32))
        if features.shape[1] != self.coef.shape[0]:
            raise ValueError(f"feature head expects {self.coef.shape[0]} features, got {features.shape[1]}")
        weighted = ((features - self.mean) / self.scale) * self.coef
        edges = np.cumsum((0, *self.widths))
        logits = [weighted[:, a:b].sum(axis=1) + self.intercept[i] for i, (a, b) in enumerate(zip(edges, edges[1:]))]
        z = np.mean(logits, axis=0)
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file({"mean": self.mean, "scale": self.scale, "coef": self.coef,
                   "intercept": np.asarray(self.intercept, dtype=np.float32).reshape(-1),
                   "blocks": np.array(self.widths, dtype=np.int64)}, str(path),
                  metadata={"model": "standardise + logistic regression per block, mean of the blocks' logits"})

    @classmethod
    def load(cls, path: str | Path) -> "FeatureHead":
        from safetensors.numpy import load_file

        try:
            tensors = load_file(str(path))
            widths = tuple(int(w) for w in tensors["blocks"]) if "blocks" in tensors else ()
            head = cls(tensors["mean"], tensors["scale"], tensors["coef"], tensors["intercept"].reshape(-1),
                       widths if len(widths) > 1 else ())
        except Exception as exc:  # safetensors raises its own error types for malformed files
            raise ModelUnavailable(f"cannot read feature head {path}: {exc}") from exc
        if sum(head.widths) != head.coef.shape[0] or len(head.widths) != head.intercept.shape[0]:
            raise ModelUnavailable(f"cannot read feature head {path}: blocks {head.widths} do not fit its "
                                   f"{head.coef.shape[0]} coefficients / {head.intercept.shape[0]} intercepts")
        return head


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) in float64, p clipped to [1e-6, 1 - 1e-6]."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


EQUAL_WEIGHT = 0.5                                        # the plain mean of the two logits
CNN_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))   # the grid `pick_cnn_weight` searches


def combine(p_cnn: np.ndarray, p_head: np.ndarray, cnn_weight: float = EQUAL_WEIGHT) -> np.ndarray:
    """The CNN's and the head's probabilities mixed in logit space: sigmoid(w logit(cnn) + (1 - w) logit(head)),
    w = `cnn_weight` (manifest extra feature_head "cnn_weight"; 0.5, the plain mean, where it is not recorded)."""
    z = cnn_weight * logit(p_cnn) + (1.0 - cnn_weight) * logit(p_head)
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def pick_cnn_weight(p_cnn: np.ndarray, p_head: np.ndarray, labels: np.ndarray) -> float:
    """The CNN weight of `CNN_WEIGHTS` whose combination ranks `labels` best (ROC AUC; the smaller weight on a tie)."""
    from sklearn.metrics import roc_auc_score

    return max(CNN_WEIGHTS, key=lambda w: (roc_auc_score(labels, combine(p_cnn, p_head, w)), -w))


def nested_cnn_weight(p_cnn: np.ndarray, p_head: np.ndarray, labels: np.ndarray,
                      fold: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Out-of-fold combination with the weight picked on the other folds' out-of-fold predictions (so the figure
    stays out of fold), and the weight each fold got."""
    combined, picked = np.zeros(len(labels), dtype=np.float32), []
    for k in np.unique(fold):
        held = fold == k
        w = pick_cnn_weight(p_cnn[~held], p_head[~held], labels[~held])
        combined[held] = combine(p_cnn[held], p_head[held], w)
        picked.append(w)
    return combined, picked


def check_inputs(inputs: Sequence[str]) -> tuple[str, ...]:
    """The head's inputs, validated: known names, LiteMedSAM first (the pipeline always has its embedding)."""
    inputs = tuple(inputs)
    unknown = [name for name in inputs if name not in INPUTS]
    if unknown or not inputs or inputs[0] != LITEMEDSAM or len(set(inputs)) != len(inputs):
        raise ValueError(f"feature head inputs {list(inputs)}: use {LITEMEDSAM!r}, optionally followed by any of "
                         f"{', '.join(repr(name) for name in INPUTS if name != LITEMEDSAM)}")
    return inputs


def lesion_feature_rows(inputs: Sequence[str], pixels: np.ndarray, encoder: "LiteMedSAMSegmenter",
                        embedding: "LiteMedSAMEmbedding", masks: Sequence[np.ndarray],
                        boxes: Sequence[Box]) -> np.ndarray:
    """(n, d) float32: the head's input row for each lesion (mask and box on the [0, 1] image `pixels`, whose
    LiteMedSAM `embedding` the `encoder` made)."""
    from branet_pacs.models.segmenter import encode_lesion_crop, lesion_crop_stage_embedding, pooled_embedding

    inputs = check_inputs(inputs)
    crops = [encode_lesion_crop(encoder, pixels, box, stages=LITEMEDSAM_CROP_STAGES in inputs) for box in boxes] \
        if set(CROP_INPUTS) & set(inputs) else []
    parts = []
    for name in inputs:
        if name == LITEMEDSAM:
            parts.append(np.stack([pooled_embedding(embedding, mask) for mask in masks]))
        elif name == LITEMEDSAM_CROP:
            parts.append(np.stack([pooled_embedding(crop.embedding, crop.mask) for crop in crops]))
        elif name == LITEMEDSAM_CROP_STAGES:
            parts.append(np.stack([lesion_crop_stage_embedding(crop) for crop in crops]))
        else:
            scaled = lesion_descriptors.tissue_scale(pixels)
            parts.append(np.stack([lesion_descriptors.lesion_descriptors(pixels, box, scaled) for box in boxes]))
    return np.concatenate(parts, axis=1).astype(np.float32)


def input_widths(inputs: Sequence[str]) -> tuple[int, ...]:
    """The block widths of a head reading `inputs`."""
    return tuple(WIDTHS[name] for name in check_inputs(inputs))
