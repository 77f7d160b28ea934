"""Class-conditional SNGAN networks (Miyato et al. 2018; Miyato & Koyama 2018) for square grayscale ROIs.

The generator maps (z, y) to an image in [-1, 1]: a linear layer to a 4x4 map, then stride-2 transposed convolutions
that double the size up to `image_size`, each followed by class-conditional batch normalisation (per-class gain and
bias) and ReLU, and a tanh output. The discriminator is a slimmed "standard CNN" of the SNGAN paper (a 3x3 conv, one
4x4 stride-2 conv per scale, a 3x3 conv at 4x4; leaky ReLU 0.1) with spectral normalisation on every layer and the projection head:
D(x, y) = psi(phi(x)) + <embed(y), phi(x)>, where phi(x) is the globally sum-pooled feature vector.

The width (channels at full resolution, doubled at every halving, capped at `max_channels`) sets the cost: each stage
costs about the same, so the cost grows with width squared. The CPU experiment uses a small width (see
docs/sngan-experiment.md); on a GPU use 64.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

CLASSES: tuple[str, ...] = ("benign", "malignant")


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture of a generator/discriminator pair (stored with every checkpoint and weights file)."""

    image_size: int = 128
    latent_dim: int = 100
    num_classes: int = 2
    g_width: int = 16
    d_width: int = 16
    max_channels: int = 512

    def __post_init__(self) -> None:
        if self.image_size < 8 or self.image_size & (self.image_size - 1):
            raise ValueError(f"image_size must be a power of two >= 8, got {self.image_size}")
        if self.latent_dim < 1 or self.num_classes < 1 or self.g_width < 1 or self.d_width < 1:
            raise ValueError("latent_dim, num_classes and widths must be positive")

    @property
    def stages(self) -> int:
        """Number of 2x resolution steps between 4x4 and image_size."""
        return int(math.log2(self.image_size // 4))

    def channels(self, width: int) -> list[int]:
        """Channels from the 4x4 stage (index 0) up to the full-resolution stage (index `stages`)."""
        return [min(width * 2 ** (self.stages - i), self.max_channels) for i in range(self.stages + 1)]

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> "NetworkConfig":
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: int(v) for k, v in values.items() if k in names})  # type: ignore[arg-type]


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm without its own affine part, followed by a per-class gain (init 1) and bias (init 0)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.bn(x)
        return out * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]


class Generator(nn.Module):
    """G(z, y) -> (N, 1, S, S) in [-1, 1]."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels(config.g_width)
        self.fc = nn.Linear(config.latent_dim, 4 * 4 * ch[0])
        self.bn0 = ConditionalBatchNorm2d(ch[0], config.num_classes)
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(ch[i], ch[i + 1], kernel_size=4, stride=2, padding=1) for i in range(config.stages))
        self.bns = nn.ModuleList(ConditionalBatchNorm2d(ch[i + 1], config.num_classes) for i in range(config.stages))
        self.out = nn.Conv2d(ch[-1], 1, kernel_size=3, padding=1)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(z.shape[0], -1, 4, 4)
        x = F.relu(self.bn0(x, y))
        for up, bn in zip(self.ups, self.bns):
            x = F.relu(bn(up(x), y))
        return torch.tanh(self.out(x))


class Discriminator(nn.Module):
    """Projection discriminator D(x, y) -> (N,) raw scores, spectral norm on every weight."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels(config.d_width)[::-1]  # full resolution first
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(1, ch[0], 3, padding=1))]
        for i in range(config.stages):
            layers.append(spectral_norm(nn.Conv2d(ch[i], ch[i + 1], 4, stride=2, padding=1)))
        layers.append(spectral_norm(nn.Conv2d(ch[-1], ch[-1], 3, padding=1)))
        self.convs = nn.ModuleList(layers)
        self.linear = spectral_norm(nn.Linear(ch[-1], 1))
        self.embed = spectral_norm(nn.Embedding(config.num_classes, ch[-1]))
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.parametrizations.weight.original)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.embed.parametrizations.weight.original)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
        return x.sum(dim=(2, 3))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)


def sample_latent(n: int, latent_dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal latents (the SNGAN prior)."""
    return torch.randn(n, latent_dim, generator=generator)
