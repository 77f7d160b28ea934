"""Proposal metrics against known truth."""

from __future__ import annotations

import numpy as np
import pytest

from branet_pacs.evaluation.proposals import ImageProposals, proposal_metrics
from branet_pacs.models.detector import DetectorSpec
from branet_pacs.train.detector import heatmap_dice, image_proposals
from branet_pacs.train.detector_data import build_cache

from synthetic import blob_case


def test_proposal_metrics_on_perfect_and_empty_heatmaps(tmp_path):
    rng = np.random.default_rng(2)
    cases = [blob_case(rng, tmp_path, f"m{i}", lesion=i < 4) for i in range(6)]
    cache = build_cache(cases, 64, "US")
    heatmaps = {i: (cache.targets[i] >= 0.5).astype(np.float32) * 0.95 for i in range(len(cases))}
    spec = DetectorSpec(size=64, channels=(8, 16, 32, 64), expand=0.0)
    metrics = proposal_metrics(image_proposals(cache, heatmaps, spec), min_score=0.5)
    assert metrics["lesion"]["hit_rate_iou50"] == 1.0 and metrics["lesion"]["no_proposal_fraction"] == 0.0
    assert metrics["lesion"]["false_proposals_per_lesion_image"] == 0.0
    assert metrics["normal"]["false_proposals_per_normal_image"] == 0.0
    shifted = {i: np.roll(h, 20, axis=1) for i, h in heatmaps.items()}   # every box misses by 20 model px
    assert proposal_metrics(image_proposals(cache, shifted, spec), min_score=0.5)["lesion"]["hit_rate_iou50"] < 0.5
    assert heatmap_dice(cache, heatmaps)["mean"] == pytest.approx(1.0)


def test_min_score_and_top_k_filter_the_best_first_candidates():
    image = ImageProposals("a", "benign", ((0, 0, 10, 10),),
                           (((40, 40, 50, 50), 0.8), ((0, 0, 10, 10), 0.6), ((20, 20, 30, 30), 0.2)))
    assert image.kept(0.5, 3) == [((40, 40, 50, 50), 0.8), ((0, 0, 10, 10), 0.6)]
    top1 = proposal_metrics([image], min_score=0.0, max_proposals=1)["lesion"]
    assert top1["hit_rate_iou50"] == 0.0 and top1["false_proposals_per_lesion_image"] == 1.0
    top3 = proposal_metrics([image], min_score=0.5)["lesion"]
    assert top3["hit_rate_iou50"] == 1.0 and top3["top1_hit_rate_iou50"] == 0.0
    assert top3["false_proposals_per_lesion_image"] == 1.0
