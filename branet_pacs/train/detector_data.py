"""The lesion detector's training data: every image of a dataset letterboxed once into a cache.

Images go through `branet_pacs.models.detector.letterbox` — the inference code path — so an epoch is only
augmentation + forward/backward on small arrays. The target is the union of an image's lesion masks (BUSI outlines,
mini-MIAS disks), letterboxed the same way; normal images are all background. On mammograms the breast mask from
`branet_pacs.imaging.breast` is the valid region, as in the pipeline.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from branet_pacs.datasets.cases import Case
from branet_pacs.imaging.breast import detection_region
from branet_pacs.imaging.geometry import mask_box
from branet_pacs.types import Box

log = logging.getLogger(__name__)


def training_cases(cases: Iterable[Case]) -> list[Case]:
    """The cases a detector can learn from: every abnormality traced (others are logged and left out)."""
    kept = []
    for case in cases:
        if case.complete:
            kept.append(case)
        else:
            log.warning("%s left out of detector training: %s", case.name,
                        "; ".join(case.notes) or "no lesion mask")
    return kept


@dataclass
class CachedSet:
    """All images letterboxed to the model input, their targets, and what is needed to map results back."""

    inputs: np.ndarray        # (n, 2, s, s) float16: image, valid mask
    targets: np.ndarray       # (n, s, s) float16: lesion union, letterboxed the same way
    names: np.ndarray         # (n,) str
    groups: np.ndarray        # (n,) str
    categories: np.ndarray    # (n,) str
    crops: np.ndarray         # (n, 4) int: Letterbox.crop
    scales: np.ndarray        # (n,) float
    offsets: np.ndarray       # (n, 2) int
    inners: np.ndarray        # (n, 2) int
    shapes: np.ndarray        # (n, 2) int: source image (h, w)
    boxes: np.ndarray         # (m, 5) int: case index, x0, y0, x1, y1 (ground-truth lesion boxes, source coords)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def size(self) -> int:
        return int(self.inputs.shape[-1])

    def geometry(self, index: int):
        from branet_pacs.models.detector import Letterbox

        return Letterbox(crop=tuple(int(v) for v in self.crops[index]), scale=float(self.scales[index]),
                         offset=(int(self.offsets[index][0]), int(self.offsets[index][1])),
                         inner=(int(self.inners[index][0]), int(self.inners[index][1])), size=self.size)

    def gt_boxes(self, index: int) -> list[Box]:
        rows = self.boxes[self.boxes[:, 0] == index]
        return [tuple(int(v) for v in row[1:]) for row in rows]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **{k: v for k, v in asdict(self).items()})
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "CachedSet":
        with np.load(path, allow_pickle=False) as data:
            return cls(**{k: data[k] for k in data.files})


def build_cache(cases: Iterable[Case], size: int, modality: str, crop_to_valid: bool = True) -> CachedSet:
    from branet_pacs.models.detector import letterbox, resize_array

    inputs, targets, meta, boxes = [], [], [], []
    for index, case in enumerate(cases):
        image = case.pixels()
        valid = detection_region(image, modality)
        x, geo = letterbox(image, valid, size, crop_to_valid)
        union = np.zeros(image.shape, dtype=bool)
        for lesion in case.lesions:
            union |= lesion.mask
            box = mask_box(lesion.mask)
            if box is not None:
                boxes.append((index, *box))
        if valid is not None:
            union &= valid
        target = np.zeros((size, size), dtype=np.float32)
        x0, y0, x1, y1 = geo.crop
        rows, cols = geo.inner_slice()
        target[rows, cols] = resize_array(union[y0:y1, x0:x1].astype(np.float32), (geo.inner[1], geo.inner[0]))
        inputs.append(x.astype(np.float16))
        targets.append(np.clip(target, 0, 1).astype(np.float16))
        meta.append((case.name, case.group, case.category, geo, image.shape))
    if not inputs:
        raise ValueError("no images found")
    return CachedSet(
        inputs=np.stack(inputs), targets=np.stack(targets),
        names=np.array([m[0] for m in meta]), groups=np.array([m[1] for m in meta]),
        categories=np.array([m[2] for m in meta]),
        crops=np.array([m[3].crop for m in meta], dtype=np.int64),
        scales=np.array([m[3].scale for m in meta], dtype=np.float64),
        offsets=np.array([m[3].offset for m in meta], dtype=np.int64),
        inners=np.array([m[3].inner for m in meta], dtype=np.int64),
        shapes=np.array([m[4] for m in meta], dtype=np.int64),
        boxes=np.array(boxes, dtype=np.int64).reshape(-1, 5))


def sample_crops(inputs: np.ndarray, targets: np.ndarray, crop: int, rng: np.random.Generator,
                 lesion_p: float) -> tuple[np.ndarray, np.ndarray]:
    """Random crop x crop windows: near a lesion pixel with probability `lesion_p` when there is one, else centred
    on a random valid pixel (so crops of MG films mostly show breast, not padding)."""
    n, _, s, _ = inputs.shape
    xs = np.zeros((n, 2, crop, crop), dtype=np.float32)
    ys = np.zeros((n, 1, crop, crop), dtype=np.float32)
    for i in range(n):
        lesion = np.argwhere(targets[i] >= 0.5)
        pool = lesion if lesion.size and rng.random() < lesion_p else np.argwhere(inputs[i, 1] > 0.5)
        if pool.size == 0:
            cy = cx = s // 2
        else:
            cy, cx = pool[rng.integers(len(pool))]
            if pool is lesion:
                cy, cx = cy + rng.integers(-crop // 3, crop // 3 + 1), cx + rng.integers(-crop // 3, crop // 3 + 1)
        y0 = int(np.clip(cy - crop // 2, 0, s - crop))
        x0 = int(np.clip(cx - crop // 2, 0, s - crop))
        xs[i] = inputs[i, :, y0:y0 + crop, x0:x0 + crop]
        ys[i, 0] = targets[i, y0:y0 + crop, x0:x0 + crop]
    return xs, ys
