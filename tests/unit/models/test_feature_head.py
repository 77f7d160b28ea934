"""The LiteMedSAM-feature head: fitting, safetensors round trip, the logit-mean combination, and the classifier
loading it (checksum-verified) from the manifest."""

from __future__ import annotations

import numpy as np
import pytest

from branet_pacs.models.errors import ModelUnavailable
from branet_pacs.models.feature_head import FeatureHead, combine, nested_cnn_weight, pick_cnn_weight


def _separable(rng: np.random.Generator, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(n) % 2
    features = rng.normal(0, 1, (n, 512)).astype(np.float32)
    features[:, :8] += labels[:, None] * 1.5
    return features, labels


def test_head_learns_and_round_trips_through_safetensors(tmp_path) -> None:
    features, labels = _separable(np.random.default_rng(0))
    head = FeatureHead.fit(features, labels, C=0.1)
    p = head.predict(features)
    assert p.shape == (60,) and p[labels == 1].mean() > p[labels == 0].mean() + 0.2
    head.save(tmp_path / "head.safetensors")
    again = FeatureHead.load(tmp_path / "head.safetensors")
    np.testing.assert_allclose(again.predict(features), p, atol=1e-6)
    with pytest.raises(ValueError, match="512 features"):
        head.predict(features[:, :10])


def test_a_damaged_head_file_is_a_clear_model_error(tmp_path) -> None:
    (tmp_path / "head.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelUnavailable, match="cannot read feature head"):
        FeatureHead.load(tmp_path / "head.safetensors")


def test_combination_is_the_logit_mean() -> None:
    p = np.array([0.1, 0.5, 0.9], dtype=np.float32)
    np.testing.assert_allclose(combine(p, p), p, atol=1e-6)
    np.testing.assert_allclose(combine(p, 1 - p), 0.5, atol=1e-6)           # opposite opinions cancel
    np.testing.assert_allclose(combine(np.array([0.2]), np.array([0.8])), combine(np.array([0.8]), np.array([0.2])))
    assert combine(np.array([0.0]), np.array([1.0]))[0] == pytest.approx(0.5)  # clipped, never nan


def test_the_cnn_weight_mixes_logits_and_is_picked_where_the_cnn_carries_nothing() -> None:
    cnn, head = np.array([0.2, 0.9], dtype=np.float32), np.array([0.7, 0.4], dtype=np.float32)
    np.testing.assert_allclose(combine(cnn, head, 0.0), head, atol=1e-6)
    np.testing.assert_allclose(combine(cnn, head, 1.0), cnn, atol=1e-6)
    z = 0.3 * np.log(cnn / (1 - cnn)) + 0.7 * np.log(head / (1 - head))
    np.testing.assert_allclose(combine(cnn, head, 0.3), 1 / (1 + np.exp(-z)), atol=1e-6)

    rng = np.random.default_rng(3)
    labels = np.arange(200) % 2
    informative = np.clip(0.5 + 0.3 * (labels - 0.5) + rng.normal(0, 0.15, 200), 0.01, 0.99)
    noise = rng.uniform(0.05, 0.95, 200)
    assert pick_cnn_weight(noise, informative, labels) <= 0.2          # a CNN of noise gets (almost) no say
    assert pick_cnn_weight(informative, noise, labels) >= 0.8
    fold = np.arange(200) % 5
    nested, picked = nested_cnn_weight(noise, informative, labels, fold)
    assert len(picked) == 5 and all(w <= 0.3 for w in picked)
    k = 2                                   # each fold's rows use the weight picked without them
    np.testing.assert_allclose(nested[fold == k], combine(noise[fold == k], informative[fold == k], picked[k]))


def test_two_blocks_each_fit_alone_and_the_head_averages_their_logits(tmp_path) -> None:
    rng = np.random.default_rng(1)
    features, labels = _separable(rng)
    extra = rng.normal(0, 1, (60, 53)).astype(np.float32)
    extra[:, 0] += labels * 2.0
    both = np.hstack([features, extra])
    head = FeatureHead.fit(both, labels, C=(0.1, 1.0), blocks=(512, 53))
    first, second = FeatureHead.fit(features, labels, C=0.1), FeatureHead.fit(extra, labels, C=1.0)

    def logit(p):
        return np.log(p / (1 - p))

    expected = 1 / (1 + np.exp(-(logit(first.predict(features)) + logit(second.predict(extra))) / 2))
    np.testing.assert_allclose(head.predict(both), expected, atol=1e-4)
    head.save(tmp_path / "head.safetensors")
    again = FeatureHead.load(tmp_path / "head.safetensors")
    assert again.widths == (512, 53)
    np.testing.assert_allclose(again.predict(both), head.predict(both), atol=1e-6)
    with pytest.raises(ValueError, match="do not fit"):
        FeatureHead.fit(both, labels, C=(0.1,), blocks=(512, 53))


def test_head_inputs_are_named_and_litemedsam_comes_first() -> None:
    from branet_pacs.models.feature_head import check_inputs, input_widths

    assert input_widths(("litemedsam", "lesion-descriptors")) == (512, 53)
    assert input_widths(("litemedsam", "litemedsam-crop", "lesion-descriptors")) == (512, 512, 53)
    assert input_widths(("litemedsam", "litemedsam-crop-stages", "lesion-descriptors")) == (512, 960, 53)
    for wrong in (("lesion-descriptors",), ("litemedsam", "litemedsam"), ("litemedsam", "radiomics"), ()):
        with pytest.raises(ValueError, match="feature head inputs"):
            check_inputs(wrong)
