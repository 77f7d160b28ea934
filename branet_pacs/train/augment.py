"""Training-time augmentation: random geometric and intensity transforms, batched in torch.

`augment_rois` for the classifier's 128x128 ROIs (ranges per modality, `augment_settings`); `augment_letterboxed`
for the detector's letterboxed whole images, whose valid-region channel and target move with the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


# --------------------------------------------------------------------------------------------- classifier ROIs
@dataclass(frozen=True)
class AugmentSettings:
    """Ranges of the random transforms; one set per modality (see `augment_settings`)."""

    hflip: bool = True
    vflip: bool = False
    rot90: bool = False
    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.06          # fraction of the ROI side
    contrast: tuple[float, float] = (0.8, 1.25)
    brightness: float = 0.08         # additive, on the [0, 1] scale
    gamma: tuple[float, float] = (0.75, 1.35)
    speckle: float = 0.0             # sd of multiplicative noise (ultrasound speckle)
    noise: float = 0.02              # sd of additive Gaussian noise
    # scanner changes (0 = off): what differs between machines and presets more than between lesions
    blur: float = 0.0                # largest Gaussian blur sigma, pixels of the 128x128 ROI
    resolution: float = 1.0          # smallest down-then-up sampling factor (a coarser probe / zoom)
    depth_gain: float = 0.0          # largest top-to-bottom gain change (time-gain compensation), fraction


WIDE_GAMMA = (0.6, 1.65)
WIDE_CONTRAST = (0.7, 1.45)


def augment_settings(modality: str, roi_jitter: float = 0.0, scanner: bool = False,
                     intensity: bool = False) -> AugmentSettings:
    """US: left-right flips only (skin is at the top of every US image), speckle-like multiplicative noise.
    MG: a lesion has no up/down or rotation meaning on a film, so flips both ways and 90° turns; no speckle.

    `roi_jitter` > 0 widens zoom to 1/(1+j)..(1+j) and shift to j/2 of the side: ROIs cut from ground-truth boxes
    then look like ROIs cut from automatically found boxes, which are off by about that much.
    `intensity` widens only the gamma and contrast ranges (film density and exposure; no change of sharpness).
    `scanner` adds what another scanner or preset changes: those wider ranges, blur, lower resolution and
    depth-dependent gain (US).
    """
    base = AugmentSettings(speckle=0.12) if modality.lower() == "us" else \
        AugmentSettings(vflip=True, rot90=True, rotate_deg=15.0)
    if scanner or intensity:
        base = replace(base, gamma=WIDE_GAMMA, contrast=WIDE_CONTRAST)
    if scanner:
        base = replace(base, blur=1.5, resolution=0.5, depth_gain=0.35 if modality.lower() == "us" else 0.0)
    if roi_jitter <= 0:
        return base
    return replace(base, scale=(min(base.scale[0], 1.0 / (1.0 + roi_jitter)), max(base.scale[1], 1.0 + roi_jitter)),
                   translate=max(base.translate, roi_jitter / 2.0))


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample separable Gaussian blur of (n, 1, H, W) with sigmas (n,) (0 = unchanged)."""
    n = x.shape[0]
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps[None] / sigma.clamp(min=1e-3)[:, None]) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)
    kernel = torch.where(sigma[:, None] < 1e-3, (taps[None] == 0).to(x.dtype), kernel)
    y = F.pad(x.transpose(0, 1), (radius, radius, radius, radius), mode="reflect")     # (1, n, H+2r, W+2r)
    y = F.conv2d(y, kernel[:, None, None, :], groups=n)
    y = F.conv2d(y, kernel[:, None, :, None], groups=n)
    return y.transpose(0, 1)


def _coarser(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Each sample down-sampled by its factor (n,) in (0, 1] and back up (bilinear): less resolution, same size."""
    size = x.shape[-2:]
    out = []
    for sample, f in zip(x, factor.tolist()):
        small = (max(8, int(round(size[0] * f))), max(8, int(round(size[1] * f))))
        low = F.interpolate(sample[None], size=small, mode="bilinear", align_corners=False, antialias=True)
        out.append(F.interpolate(low, size=size, mode="bilinear", align_corners=False))
    return torch.cat(out)


def augment_rois(batch: torch.Tensor, settings: AugmentSettings, generator: torch.Generator) -> torch.Tensor:
    """Random geometric + intensity transforms of a batch (n, 1, H, W) in [-1, 1]; returns a new tensor."""
    n = batch.shape[0]
    device = batch.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator).to(device)

    x = batch
    if settings.hflip:
        flip = torch.rand(n, generator=generator).to(device) < 0.5
        x = torch.where(flip[:, None, None, None], torch.flip(x, dims=(-1,)), x)
    if settings.vflip:
        flip = torch.rand(n, generator=generator).to(device) < 0.5
        x = torch.where(flip[:, None, None, None], torch.flip(x, dims=(-2,)), x)
    angle = uniform(-settings.rotate_deg, settings.rotate_deg) * math.pi / 180.0
    if settings.rot90:
        angle = angle + torch.randint(0, 4, (n,), generator=generator).to(device) * (math.pi / 2)
    scale = torch.exp(uniform(math.log(settings.scale[0]), math.log(settings.scale[1])))
    tx, ty = uniform(-settings.translate, settings.translate) * 2, uniform(-settings.translate, settings.translate) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    x = (x + 1.0) / 2.0   # [0, 1]
    gamma = torch.exp(uniform(math.log(settings.gamma[0]), math.log(settings.gamma[1])))[:, None, None, None]
    x = x.clamp(0.0, 1.0) ** gamma
    contrast = torch.exp(uniform(math.log(settings.contrast[0]), math.log(settings.contrast[1])))
    brightness = uniform(-settings.brightness, settings.brightness)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast[:, None, None, None] + mean + brightness[:, None, None, None]
    if settings.depth_gain > 0:     # gain rising or falling with depth (rows), around the middle of the ROI
        slope = uniform(-settings.depth_gain, settings.depth_gain)[:, None, None, None]
        rows = torch.linspace(-0.5, 0.5, x.shape[-2], device=device)[None, None, :, None]
        x = x * (1.0 + slope * rows)
    if settings.resolution < 1.0:
        x = _coarser(x, uniform(settings.resolution, 1.0))
    if settings.blur > 0:
        x = _blur(x, uniform(0.0, settings.blur))
    if settings.speckle > 0:
        sd = uniform(0.0, settings.speckle)[:, None, None, None]
        x = x * (1.0 + sd * torch.randn(x.shape, generator=generator).to(device))
    if settings.noise > 0:
        sd = uniform(0.0, settings.noise)[:, None, None, None]
        x = x + sd * torch.randn(x.shape, generator=generator).to(device)
    return (x.clamp(0.0, 1.0) * 2.0 - 1.0).contiguous()


# --------------------------------------------------------------------------------------------- detector inputs
def augment_letterboxed(x: torch.Tensor, y: torch.Tensor,
                        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Flips, small rotations, zoom 0.75-1.33x, shifts; gamma, contrast, brightness, blur, noise (all batched).

    `x` is (n, 2, s, s) (image, valid mask), `y` the (n, 1, s, s) target. The valid channel moves with the image
    and is re-binarised; intensities outside it stay 0, as at inference.
    """
    n = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (hi - lo) + lo

    angle = uniform(-10, 10) * math.pi / 180
    zoom = torch.exp(uniform(math.log(0.75), math.log(1.33)))
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    tx, ty = uniform(-0.1, 0.1), uniform(-0.1, 0.1)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    valid = (x[:, 1:2] > 0.5).float()
    img = x[:, 0:1].clamp(0, 1)
    gamma = torch.exp(uniform(math.log(0.7), math.log(1.4))).view(n, 1, 1, 1)
    img = img.clamp_min(1e-6) ** gamma
    contrast, bright = uniform(0.8, 1.2).view(n, 1, 1, 1), uniform(-0.08, 0.08).view(n, 1, 1, 1)
    img = (img - 0.5) * contrast + 0.5 + bright
    blur = torch.rand(n, generator=generator) < 0.3
    if blur.any():
        img[blur] = F.avg_pool2d(img[blur], 3, stride=1, padding=1, count_include_pad=False)
    sigma = uniform(0.0, 0.04).view(n, 1, 1, 1)
    img = img + sigma * torch.randn(img.shape, generator=generator)
    img = img.clamp(0, 1) * valid
    return torch.cat([img, valid], 1), y
