"""Benign/malignant ROI classifier: a 1-channel, 2-class torchvision ResNet18 loaded from the model manifest.

Weights are safetensors (fp16 or fp32 on disk, fp32 in memory). A file may hold one network or an ensemble
(e.g. the cross-validation folds): ensemble members are stored under the key prefix ``member<i>.`` and their
probabilities are averaged.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torchvision.models import resnet18

from branet_pacs.imaging.roi import (DEFAULT_LESION_BOX, DEFAULT_WINDOW, LESION_BOXES, ROI_SIZE, extract_roi,
                                    window_levels)
from branet_pacs.models.errors import ModelUnavailable
from branet_pacs.models.feature_head import EQUAL_WEIGHT, LITEMEDSAM, FeatureHead, check_inputs, combine
from branet_pacs.models.manifest import ModelEntry, file_sha256, find_model, verified_weights_path
from branet_pacs.models.onnx_engine import compiled_or_module
from branet_pacs.models.runtime import Engine, select_device
from branet_pacs.types import Box

BATCH_SIZE = 64
MALIGNANT_CLASS = 1          # logits are (benign, malignant)
_MEMBER_PREFIX = "member"


def build_resnet18(dropout: float = 0.5) -> nn.Module:
    """ResNet18 (random init) for (n, 1, 128, 128) inputs: 1-channel stem, dropout, then a 2-class head.

    State-dict keys are torchvision's, with the head at ``fc.1`` (``fc.0`` is the dropout).
    """
    net = resnet18(weights=None)
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(net.fc.in_features, 2))
    return net


def save_classifier(model: nn.Module | Sequence[nn.Module], path: str | Path, half: bool = True) -> None:
    """Write one network, or an ensemble of networks, as safetensors (floating tensors in fp16 when `half`)."""
    members = [model] if isinstance(model, nn.Module) else list(model)
    if not members:
        raise ValueError("save_classifier needs at least one network")
    tensors: dict[str, torch.Tensor] = {}
    for index, member in enumerate(members):
        prefix = f"{_MEMBER_PREFIX}{index}." if len(members) > 1 else ""
        for key, value in member.state_dict().items():
            value = value.detach().to("cpu")
            if half and value.is_floating_point():
                value = value.half()
            tensors[prefix + key] = value.contiguous()
    metadata = {"format": "pt", "architecture": "resnet18-1ch-2cls", "members": str(len(members))}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def load_classifier_networks(path: str | Path, dropout: float = 0.5) -> list[nn.Module]:
    """The network(s) stored in a safetensors file by `save_classifier`, in fp32, eval mode, on the CPU."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise ModelUnavailable(f"cannot read classifier weights {path}: {exc}") from exc
    groups: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if value.is_floating_point():
            value = value.float()
        head, _, rest = key.partition(".")
        if head.startswith(_MEMBER_PREFIX) and head[len(_MEMBER_PREFIX):].isdigit():
            groups.setdefault(int(head[len(_MEMBER_PREFIX):]), {})[rest] = value
        else:
            groups.setdefault(0, {})[key] = value
    networks = []
    for index in sorted(groups):
        net = build_resnet18(dropout)
        try:
            net.load_state_dict(groups[index], strict=True)
        except RuntimeError as exc:
            raise ModelUnavailable(f"classifier weights {path} do not fit a 1-channel 2-class ResNet18: {exc}") \
                from exc
        networks.append(net.eval())
    return networks


@dataclass(frozen=True)
class _CacheKey:
    weights: str
    sha256: str
    device: str
    dropout: float


_cache: dict[_CacheKey, list[nn.Module]] = {}
_cache_lock = threading.Lock()


def _networks(path: Path, entry: ModelEntry, device: torch.device) -> list[nn.Module]:
    dropout = float(entry.extra.get("dropout", 0.5))
    key = _CacheKey(str(path), entry.sha256, str(device), dropout)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = [net.to(device) for net in load_classifier_networks(path, dropout)]
        return _cache[key]


def load_feature_head(models_dir: str | Path, entry: ModelEntry) -> FeatureHead | None:
    """The classifier's LiteMedSAM-feature head (manifest extra "feature_head"), checksum-verified; None if it has
    none."""
    spec = entry.extra.get("feature_head")
    if not spec:
        return None
    path = Path(models_dir) / spec["file"]
    if not path.is_file():
        raise ModelUnavailable(f"classifier '{entry.name}': feature head {path} is missing")
    if file_sha256(path) != spec["sha256"]:
        raise ModelUnavailable(f"classifier '{entry.name}': feature head {path} fails its SHA-256 check")
    return FeatureHead.load(path)


class _Probability(nn.Module):
    """p(malignant) (n,) of ROIs (n, 1, s, s): softmax averaged over the networks and, with `tta`, the left-right
    flip. One module, so the whole ensemble is one exported graph."""

    def __init__(self, networks: Sequence[nn.Module], tta: bool) -> None:
        super().__init__()
        self.networks = nn.ModuleList(networks)
        self.tta = tta

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        views = [batch, torch.flip(batch, dims=(-1,))] if self.tta else [batch]
        total = torch.zeros(batch.shape[0], device=batch.device)
        for net in self.networks:
            for view in views:
                total = total + torch.softmax(net(view).float(), dim=1)[:, MALIGNANT_CLASS]
        return total / (len(self.networks) * len(views))


class MalignancyClassifier:
    """p(malignant) for square ROIs in [-1, 1] (128x128 unless the manifest input "size" says otherwise; made by
    `branet_pacs.imaging.roi.extract_roi`), combined with the feature head's p(malignant) on the lesions' LiteMedSAM
    features when the model has one."""

    def __init__(self, entry: ModelEntry, networks: list[nn.Module], device: torch.device,
                 feature_head: FeatureHead | None = None, engine: Engine = Engine()) -> None:
        if entry.threshold is None:
            raise ModelUnavailable(f"classifier '{entry.name}' has no decision threshold in the manifest")
        self.entry = entry
        self.name = entry.name
        self.version = entry.version
        self.threshold = float(entry.threshold)
        self.modality = entry.modality
        self.device = device
        self.tta = bool(entry.extra.get("tta", False))
        self.roi_size = int(entry.input.get("size", ROI_SIZE))
        self._networks = networks
        self.feature_head = feature_head
        self._forward = compiled_or_module(
            _Probability(networks, self.tta), [torch.zeros(2, 1, self.roi_size, self.roi_size)], engine=engine,
            name=f"classifier-{entry.name}", digest=entry.sha256, device=device, dynamic=(0,))

    @classmethod
    def load(cls, models_dir: str | Path, modality: str, device: str | torch.device = "auto",
             name: str | None = None, engine: Engine = Engine()) -> "MalignancyClassifier":
        """The manifest's classifier for `modality` (highest version, or the one called `name`).

        Raises ModelUnavailable when there is none, or its file is missing or fails its checksum.
        Networks are loaded once per process and weights file.
        """
        entry = find_model(models_dir, "classifier", modality, name=name)
        path = verified_weights_path(models_dir, entry)
        torch_device = device if isinstance(device, torch.device) else select_device(device)
        return cls(entry, _networks(path, entry, torch_device), torch_device, load_feature_head(models_dir, entry),
                   engine)

    @property
    def weights_sha256(self) -> tuple[str, ...]:
        """Checksums of everything that decides p(malignant): the networks, and the feature head when there is one."""
        head = self.entry.extra.get("feature_head")
        return (self.entry.sha256, head["sha256"]) if head else (self.entry.sha256,)

    @property
    def head_inputs(self) -> tuple[str, ...]:
        """What the feature head reads, in order (`feature_head.INPUTS`); empty without a head."""
        if self.feature_head is None:
            return ()
        return check_inputs(self.entry.extra["feature_head"].get("inputs", (LITEMEDSAM,)))

    @property
    def cnn_weight(self) -> float:
        """The CNN's weight beside the feature head in logit space (manifest extra feature_head "cnn_weight")."""
        return float(self.entry.extra.get("feature_head", {}).get("cnn_weight", EQUAL_WEIGHT))

    @property
    def roi_margin(self) -> float | None:
        """Context margin the model was trained with (manifest input spec), None when not recorded."""
        margin = self.entry.input.get("margin")
        return None if margin is None else float(margin)

    @property
    def roi_window(self) -> str:
        """The ROIs' grey-level window it was trained on (`imaging.roi.WINDOWS`; manifest input "window")."""
        return str(self.entry.input.get("window", DEFAULT_WINDOW))

    @property
    def lesion_box(self) -> str:
        """Which box of a finding it reads (`imaging.roi.LESION_BOXES`; manifest input "lesion_box"): the
        segmenter's mask box ("mask") or the prompt's box ("prompt"), after what its training ROIs were cut on."""
        kind = str(self.entry.input.get("lesion_box", DEFAULT_LESION_BOX))
        if kind not in LESION_BOXES:
            raise ModelUnavailable(f"classifier '{self.name}': unknown lesion_box {kind!r} in its manifest entry "
                                   f"(one of {', '.join(LESION_BOXES)})")
        return kind

    @property
    def margin_views(self) -> tuple[float, ...]:
        """ROI context margins whose predictions `predict_boxes` averages (manifest input "tta_margins").

        Empty: the training margin only.
        A box from the automatic path is off by some 10-20 % of its size; averaging over tighter and wider crops
        makes the score less dependent on that error (measured in docs/pipeline-eval).
        """
        return tuple(float(m) for m in self.entry.input.get("tta_margins", ()))

    def predict_boxes(self, image: np.ndarray, boxes: Sequence[Box], margin: float,
                      features: np.ndarray | None = None) -> np.ndarray:
        """p(malignant) per lesion box on a 2-D [0, 1] image: the CNN averaged over the margin views (else cut at
        `margin`), combined with the feature head on `features` (one row per box) when the model has a head."""
        if not boxes:
            return np.zeros((0,), dtype=np.float32)
        margins = self.margin_views or (margin,)
        levels = window_levels(image, self.roi_window)
        rois = np.stack([extract_roi(image, box, m, levels, self.roi_size) for box in boxes for m in margins])
        p = self.predict(rois).reshape(len(boxes), len(margins)).mean(axis=1)
        return self.with_feature_head(p, features)

    def with_feature_head(self, p_cnn: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        """The CNN's p(malignant) combined with the feature head's (unchanged when the model has no head)."""
        if self.feature_head is None:
            return p_cnn
        if features is None or len(features) != len(p_cnn):
            raise ValueError(f"classifier '{self.name}' has a feature head: give one feature row per ROI "
                             f"({', '.join(self.head_inputs)})")
        return combine(p_cnn, self.feature_head.predict(features), self.cnn_weight)

    @property
    def ensemble_size(self) -> int:
        return len(self._networks)

    def predict(self, rois: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """p(malignant), shape (n,), for ROIs of shape (n, s, s), s = `roi_size` (or one ROI (s, s) -> shape (1,))."""
        rois = np.asarray(rois, dtype=np.float32)
        if rois.ndim == 2:
            rois = rois[None]
        size = self.roi_size
        if rois.ndim != 3 or rois.shape[1:] != (size, size):
            raise ValueError(f"expected ROIs of shape (n, {size}, {size}), got {rois.shape}")
        if rois.shape[0] == 0:
            return np.zeros((0,), dtype=np.float32)
        if not np.isfinite(rois).all() or rois.min() < -1.001 or rois.max() > 1.001:
            raise ValueError("ROIs must be finite and in [-1, 1] (use branet_pacs.imaging.roi.extract_roi)")
        out = np.empty((rois.shape[0],), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, rois.shape[0], batch_size):
                batch = torch.from_numpy(rois[start:start + batch_size]).to(self.device)[:, None]
                out[start:start + batch.shape[0]] = self._forward(batch).cpu().numpy()
        return out

    def label(self, p: float) -> str:
        return "malignant" if p >= self.threshold else "benign"


def clear_cache() -> None:
    """Forget loaded networks (tests, or after weights were replaced on disk)."""
    with _cache_lock:
        _cache.clear()
