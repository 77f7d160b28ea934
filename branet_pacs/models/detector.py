"""Learned lesion detector: whole image in, scored lesion boxes out (the automatic proposal path).

A small U-Net predicts a lesion-probability heatmap on the whole image, letterboxed to a fixed square size.
Candidates are the heatmap's local maxima: each peak above `min_score` becomes one proposal whose region is the
connected set of pixels at or above `region_level` x its peak (a half-maximum contour, so faint and strong lesions
get boxes of the right size), scored by the peak probability, de-duplicated by box IoU, mapped back to image
coordinates and lightly expanded (box prompts for LiteMedSAM work best slightly loose).

Input handling is identical at training and inference (`letterbox`): crop to the valid region (the MG breast mask,
or the whole US frame), resize the longer side to `size` with antialiasing, stretch intensities to the 1st-99th
percentile of the valid pixels, zero outside the valid region, pad to a square. Channel 0 is the image, channel 1
the valid mask, so the network can tell padding from dark tissue.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from branet_pacs.imaging.geometry import mask_box
from branet_pacs.models.errors import ModelUnavailable
from branet_pacs.models.runtime import Engine
from branet_pacs.types import Box

log = logging.getLogger(__name__)

MODEL_KIND = "detector"
METADATA_KEY = "branet_lesion_detector"
METADATA_FORMAT = "branet-lesion-detector/1"


@dataclass(frozen=True)
class Proposal:
    """One lesion candidate: `box` in the coordinates of the pixels given to `propose`, `score` in [0, 1]."""

    box: Box
    score: float


@dataclass(frozen=True)
class DetectorSpec:
    """Architecture, input and candidate-extraction settings; stored with the weights (safetensors metadata)."""

    size: int = 128                    # letterboxed square input side
    channels: tuple[int, ...] = (16, 32, 64, 128)  # U-Net widths, one per level (after the stride-2 stem)
    region_level: float = 0.5          # a proposal's region: pixels >= region_level * its peak
    expand: float = 0.05               # box growth per side, as a fraction of the box size
    min_area: int = 4                  # smallest region (input pixels) worth proposing
    nms_iou: float = 0.3               # proposals overlapping a better one more than this are dropped
    crop_to_valid: bool = True         # crop to the valid mask's bounding box before letterboxing
    flip_tta: bool = True              # average the heatmap with the horizontally flipped input's

    @classmethod
    def from_dict(cls, values: dict) -> "DetectorSpec":
        known = {f.name for f in fields(cls)}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in known}
        return cls(**values)


# --- network ----------------------------------------------------------------------------------------------------


class _DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyUNet(nn.Module):
    """U-Net on a stride-2 stem: 2 input channels, 1 logit channel at the input resolution.

    The stem halves the resolution before the first level (the full-resolution levels are what makes a U-Net slow
    on a CPU); the logits are upsampled bilinearly back to the input size. The input side must be divisible by
    2 ** len(channels).
    """

    def __init__(self, channels: tuple[int, ...] = DetectorSpec.channels, in_channels: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels[0], 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True))
        self.down = nn.ModuleList()
        cin = channels[0]
        for c in channels:
            self.down.append(_DoubleConv(cin, c))
            cin = c
        self.up = nn.ModuleList(
            _DoubleConv(channels[i + 1] + channels[i], channels[i]) for i in reversed(range(len(channels) - 1)))
        self.head = nn.Conv2d(channels[0], 1, 1)
        nn.init.constant_(self.head.bias, -2.0)   # start near the lesion prior (p ~ 0.12), not 0.5 everywhere

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = self.stem(x)
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return F.interpolate(self.head(x), size=size, mode="bilinear", align_corners=False)


class HeatmapEnsemble(nn.Module):
    """Mean lesion probability of several TinyUNets (the cross-validation fold models shipped together)."""

    def __init__(self, members: list[TinyUNet]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.sigmoid(m(x)) for m in self.members]).mean(dim=0)


def save_weights(path: str | Path, members: list[TinyUNet], spec: DetectorSpec) -> Path:
    """Write the members as one safetensors file (floating tensors in fp16) with the spec in its metadata."""
    from safetensors.torch import save_file

    tensors = {}
    for index, member in enumerate(members):
        for key, value in member.state_dict().items():
            value = value.detach().cpu()
            tensors[f"m{index}.{key}"] = (value.half() if value.is_floating_point() else value.clone()).contiguous()
    # One metadata key: safetensors stores metadata as a hash map, so several keys would make the bytes (and
    # the manifest's SHA-256) change from one save to the next.
    header = {"format": METADATA_FORMAT, "members": len(members), "spec": asdict(spec)}
    metadata = {METADATA_KEY: json.dumps(header, sort_keys=True)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


# --- input geometry ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Letterbox:
    """Where the model input came from: `crop` of the source image, scaled by `scale`, placed at `offset`."""

    crop: Box                          # (x0, y0, x1, y1) in source-image pixels
    scale: float                       # model pixels per source pixel
    offset: tuple[int, int]            # (x, y) of the scaled crop inside the square input
    inner: tuple[int, int]             # (width, height) of the scaled crop inside the square input
    size: int

    def to_image(self, box: tuple[float, float, float, float], image_shape: tuple[int, int]) -> Box:
        """A model-space box (float, exclusive end) as an integer source-image box clipped to the image."""
        h, w = image_shape
        x0, y0, x1, y1 = ((box[0] - self.offset[0]) / self.scale + self.crop[0],
                          (box[1] - self.offset[1]) / self.scale + self.crop[1],
                          (box[2] - self.offset[0]) / self.scale + self.crop[0],
                          (box[3] - self.offset[1]) / self.scale + self.crop[1])
        ix0, iy0 = int(np.clip(np.floor(x0), 0, w - 1)), int(np.clip(np.floor(y0), 0, h - 1))
        ix1, iy1 = int(np.clip(np.ceil(x1), ix0 + 1, w)), int(np.clip(np.ceil(y1), iy0 + 1, h))
        return ix0, iy0, ix1, iy1

    def inner_slice(self) -> tuple[slice, slice]:
        return (slice(self.offset[1], self.offset[1] + self.inner[1]),
                slice(self.offset[0], self.offset[0] + self.inner[0]))


def resize_array(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D float array with antialiasing when shrinking (torch; fast on large mammograms)."""
    if tuple(array.shape) == tuple(shape):
        return array.astype(np.float32, copy=True)
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    out = F.interpolate(tensor, size=shape, mode="bilinear", align_corners=False, antialias=True)
    return out[0, 0].numpy()


def stretch_valid(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Map the 1st-99th percentile of the valid pixels onto [0, 1]; zero outside `valid`."""
    values = image[valid]
    if values.size == 0:
        return np.zeros_like(image, dtype=np.float32)
    lo, hi = np.percentile(values, (1.0, 99.0))
    out = np.clip((image - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)
    out[~valid] = 0.0
    return out


def letterbox(pixels: np.ndarray, valid_mask: np.ndarray | None, size: int,
              crop_to_valid: bool = True) -> tuple[np.ndarray, Letterbox]:
    """The model input (2, size, size) float32 for one image, and the geometry to map results back."""
    if pixels.ndim != 2:
        raise ValueError(f"detector expects a 2-D grayscale image, got shape {pixels.shape}")
    h, w = pixels.shape
    valid = np.ones((h, w), dtype=bool) if valid_mask is None else np.asarray(valid_mask, dtype=bool)
    if valid.shape != (h, w):
        raise ValueError(f"valid_mask shape {valid.shape} differs from the image's {(h, w)}")
    crop = mask_box(valid) if crop_to_valid else None
    crop = crop or (0, 0, w, h)
    x0, y0, x1, y1 = crop
    scale = size / max(x1 - x0, y1 - y0)
    iw, ih = max(1, min(size, int(round((x1 - x0) * scale)))), max(1, min(size, int(round((y1 - y0) * scale))))
    small = resize_array(pixels[y0:y1, x0:x1], (ih, iw))
    small_valid = resize_array(valid[y0:y1, x0:x1].astype(np.float32), (ih, iw)) >= 0.5
    ox, oy = (size - iw) // 2, (size - ih) // 2
    geometry = Letterbox(crop=crop, scale=scale, offset=(ox, oy), inner=(iw, ih), size=size)
    out = np.zeros((2, size, size), dtype=np.float32)
    rows, cols = geometry.inner_slice()
    out[0, rows, cols] = stretch_valid(small, small_valid)
    out[1, rows, cols] = small_valid
    return out, geometry


# --- candidate extraction (pure) --------------------------------------------------------------------------------


def _nms_keep(box: tuple[float, ...], kept: list[tuple[float, ...]], iou: float) -> bool:
    for other in kept:
        ix = max(0.0, min(box[2], other[2]) - max(box[0], other[0]))
        iy = max(0.0, min(box[3], other[3]) - max(box[1], other[1]))
        inter = ix * iy
        union = (box[2] - box[0]) * (box[3] - box[1]) + (other[2] - other[0]) * (other[3] - other[1]) - inter
        if union > 0 and inter / union > iou:
            return False
    return True


def heatmap_candidates(heatmap: np.ndarray, valid_mask: np.ndarray | None = None, *, max_proposals: int = 3,
                       min_score: float = 0.5, region_level: float = 0.5, min_area: int = 4,
                       nms_iou: float = 0.3, expand: float = 0.0) -> list[tuple[tuple[float, float, float, float],
                                                                             float]]:
    """Scored float boxes (x0, y0, x1, y1, exclusive end) in heatmap coordinates, best first.

    Each local maximum >= `min_score` seeds a region: the connected pixels >= `region_level` x peak around it.
    Regions smaller than `min_area`, and boxes overlapping a better one by more than `nms_iou`, are dropped.
    """
    heat = np.asarray(heatmap, dtype=np.float32)
    if valid_mask is not None:
        heat = np.where(np.asarray(valid_mask, dtype=bool), heat, 0.0)
    if max_proposals <= 0 or heat.size == 0 or float(heat.max()) < min_score:
        return []
    peaks_mask = (heat == ndimage.maximum_filter(heat, size=3, mode="constant")) & (heat >= min_score)
    peak_rows, peak_cols = np.nonzero(peaks_mask)
    order = np.argsort(-heat[peak_rows, peak_cols], kind="stable")
    claimed = np.zeros(heat.shape, dtype=bool)
    results: list[tuple[tuple[float, float, float, float], float]] = []
    kept_boxes: list[tuple[float, ...]] = []
    for index in order:
        r, c = int(peak_rows[index]), int(peak_cols[index])
        if claimed[r, c]:
            continue
        peak = float(heat[r, c])
        labels, _ = ndimage.label(heat >= region_level * peak, structure=np.ones((3, 3), dtype=bool))
        region = labels == labels[r, c]
        claimed |= region
        if int(region.sum()) < min_area:
            continue
        rows = np.flatnonzero(region.any(axis=1))
        cols = np.flatnonzero(region.any(axis=0))
        x0, y0, x1, y1 = float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)
        dx, dy = expand * (x1 - x0), expand * (y1 - y0)
        box = (x0 - dx, y0 - dy, x1 + dx, y1 + dy)
        if not _nms_keep(box, kept_boxes, nms_iou):
            continue
        kept_boxes.append(box)
        results.append((box, peak))
        if len(results) >= max_proposals:
            break
    return results


def heatmap_to_proposals(heatmap: np.ndarray, valid_mask: np.ndarray | None = None, *, max_proposals: int = 3,
                         min_score: float = 0.5, region_level: float = 0.5, min_area: int = 4,
                         nms_iou: float = 0.3, expand: float = 0.05) -> list[Proposal]:
    """Proposals with integer boxes in the heatmap's own pixel grid (clipped to it), best first."""
    h, w = np.shape(heatmap)
    proposals = []
    for (x0, y0, x1, y1), score in heatmap_candidates(
            heatmap, valid_mask, max_proposals=max_proposals, min_score=min_score, region_level=region_level,
            min_area=min_area, nms_iou=nms_iou, expand=expand):
        ix0, iy0 = int(max(0, np.floor(x0))), int(max(0, np.floor(y0)))
        ix1, iy1 = int(min(w, np.ceil(x1))), int(min(h, np.ceil(y1)))
        proposals.append(Proposal(box=(ix0, iy0, ix1, iy1), score=score))
    return proposals


# --- the detector -----------------------------------------------------------------------------------------------


@dataclass
class LesionDetector:
    """A trained heatmap detector for one modality. `propose` is what the pipeline calls."""

    net: HeatmapEnsemble
    spec: DetectorSpec
    name: str
    version: str
    modality: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    sha256: str = ""          # of the weights file, when loaded through the manifest

    def __post_init__(self) -> None:
        self.net.to(self.device).eval()
        self._forward = self.net

    def use_engine(self, engine: Engine) -> "LesionDetector":
        """Run the heatmap network on `engine` (ONNX Runtime on the CPU, exported from these weights)."""
        from branet_pacs.models.onnx_engine import compiled_or_module

        example = torch.zeros(1, 2, self.spec.size, self.spec.size)
        self._forward = compiled_or_module(self.net, [example], engine=engine, name=f"detector-{self.name}",
                                           digest=self.sha256 or f"{self.name}-{self.version}", device=self.device,
                                           dynamic=(0,))
        return self

    @classmethod
    def load(cls, models_dir: str | Path, modality: str, device: str = "auto",
             name: str | None = None, engine: Engine | None = None) -> "LesionDetector":
        """The detector registered for `modality` in `models_dir/manifest.json` (highest version, or the one called
        `name`; sha256-verified weights)."""
        from branet_pacs.models import manifest
        from branet_pacs.models.runtime import select_device

        entry = manifest.find_model(models_dir, kind=MODEL_KIND, modality=modality, name=name)
        path = manifest.verified_weights_path(models_dir, entry)
        detector = cls.from_weights(path, name=entry.name, version=entry.version, modality=entry.modality,
                                    device=select_device(device))
        detector.sha256 = entry.sha256
        return detector.use_engine(engine) if engine is not None else detector

    @classmethod
    def from_weights(cls, path: str | Path, *, name: str, version: str, modality: str,
                     device: torch.device | str = "cpu") -> "LesionDetector":
        """Build from a safetensors file whose metadata holds the DetectorSpec (no manifest check)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ModelUnavailable(f"detector weights not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                state = {key: handle.get_tensor(key) for key in handle.keys()}
            if METADATA_KEY not in metadata:
                raise ModelUnavailable(f"{path} is not a BraNet lesion detector (no '{METADATA_KEY}' metadata)")
            header = json.loads(metadata[METADATA_KEY])
            spec = DetectorSpec.from_dict(header["spec"])
            count = int(header["members"])
        except ModelUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - a corrupt file is a missing model, never random weights
            raise ModelUnavailable(f"cannot read detector weights {path}: {exc}") from exc
        members = []
        for index in range(count):
            prefix = f"m{index}."
            member = TinyUNet(spec.channels)
            own = {k[len(prefix):]: (v.float() if v.is_floating_point() else v)
                   for k, v in state.items() if k.startswith(prefix)}
            try:
                member.load_state_dict(own, strict=True)
            except RuntimeError as exc:
                raise ModelUnavailable(f"detector weights {path} do not match the architecture: {exc}") from exc
            members.append(member)
        return cls(net=HeatmapEnsemble(members), spec=spec, name=name, version=version, modality=modality.upper(),
                   device=torch.device(device))

    # --- inference ------------------------------------------------------------------------------------------------
    def _valid(self, pixels: np.ndarray, valid_mask: np.ndarray | None) -> np.ndarray | None:
        if valid_mask is None:
            from branet_pacs.imaging.breast import detection_region

            return detection_region(pixels, self.modality)
        return valid_mask

    @torch.inference_mode()
    def model_heatmap(self, inputs: np.ndarray) -> np.ndarray:
        """Probabilities (n, size, size) for letterboxed inputs (n, 2, size, size) or (2, size, size)."""
        batch = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
        single = batch.ndim == 3
        if single:
            batch = batch[None]
        batch = batch.to(self.device)
        prob = self._forward(batch).to(self.device)
        if self.spec.flip_tta:
            prob = 0.5 * (prob + self._forward(batch.flip(-1)).to(self.device).flip(-1))
        out = prob[:, 0].float().cpu().numpy()
        return out[0] if single else out

    def _prepare(self, pixels: np.ndarray, valid_mask: np.ndarray | None) -> tuple[np.ndarray, Letterbox, np.ndarray]:
        pixels = np.asarray(pixels, dtype=np.float32)
        valid = self._valid(pixels, valid_mask)
        inputs, geometry = letterbox(pixels, valid, self.spec.size, self.spec.crop_to_valid)
        return inputs, geometry, self.model_heatmap(inputs)

    def propose(self, pixels: np.ndarray, valid_mask: np.ndarray | None = None, max_proposals: int = 3,
                min_score: float = 0.5) -> list[Proposal]:
        """Up to `max_proposals` lesion boxes (image coordinates of `pixels`) scoring >= `min_score`, best first."""
        inputs, geometry, heat = self._prepare(pixels, valid_mask)
        return proposals_from_model_heatmap(heat, inputs[1] > 0.5, geometry, pixels.shape, self.spec,
                                            max_proposals=max_proposals, min_score=min_score)

    def heatmap(self, pixels: np.ndarray, valid_mask: np.ndarray | None = None) -> np.ndarray:
        """Lesion probability (h, w) float32 at the resolution of `pixels` (0 outside the letterboxed crop)."""
        pixels = np.asarray(pixels, dtype=np.float32)
        _, geometry, heat = self._prepare(pixels, valid_mask)
        return model_heatmap_to_image(heat, geometry, pixels.shape)


def proposals_from_model_heatmap(heat: np.ndarray, valid: np.ndarray | None, geometry: Letterbox,
                                 image_shape: tuple[int, int], spec: DetectorSpec, *, max_proposals: int = 3,
                                 min_score: float = 0.5) -> list[Proposal]:
    """Candidate extraction on a model-space heatmap, boxes mapped into source-image coordinates."""
    candidates = heatmap_candidates(heat, valid, max_proposals=max_proposals, min_score=min_score,
                                    region_level=spec.region_level, min_area=spec.min_area,
                                    nms_iou=spec.nms_iou, expand=spec.expand)
    return [Proposal(box=geometry.to_image(box, image_shape), score=score) for box, score in candidates]


def model_heatmap_to_image(heat: np.ndarray, geometry: Letterbox, image_shape: tuple[int, int]) -> np.ndarray:
    """Undo the letterbox: a model-space heatmap as an image-sized probability map."""
    rows, cols = geometry.inner_slice()
    x0, y0, x1, y1 = geometry.crop
    out = np.zeros(image_shape, dtype=np.float32)
    out[y0:y1, x0:x1] = np.clip(resize_array(heat[rows, cols], (y1 - y0, x1 - x0)), 0.0, 1.0)
    return out
