"""Hinge loss of the SNGAN paper (its Eq. 1) and the discriminator's real/fake accuracy."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def discriminator_hinge_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """L_D = E[max(0, 1 - D(x, y))] + E[max(0, 1 + D(G(z), y))]."""
    return F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean()


def generator_hinge_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """L_G = -E[D(G(z), y)]."""
    return -fake_scores.mean()


def real_fake_accuracy(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> tuple[float, float]:
    """Fraction of real samples scored > 0 and of fake samples scored < 0 (the hinge's decision boundary)."""
    return float((real_scores > 0).float().mean()), float((fake_scores < 0).float().mean())
