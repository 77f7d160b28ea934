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
    sites: np.ndarray | None = None   # (n,) str: the dataset of each image (set by `concat_caches`)

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

    def subset(self, index: np.ndarray) -> "CachedSet":
        """The images at `index`, in that order (lesion boxes renumbered)."""
        index = np.asarray(index, dtype=np.int64)
        renumber = {int(old): new for new, old in enumerate(index)}
        boxes = np.array([(renumber[int(b[0])], *b[1:]) for b in self.boxes if int(b[0]) in renumber],
                         dtype=np.int64).reshape(-1, 5)
        fields = {k: v[index] for k, v in asdict(self).items() if k != "boxes" and v is not None}
        return CachedSet(**fields, boxes=boxes)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **{k: v for k, v in asdict(self).items() if v is not None})
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "CachedSet":
        with np.load(path, allow_pickle=False) as data:
            return cls(**{k: data[k] for k in data.files})


def concat_caches(caches: dict[str, CachedSet]) -> CachedSet:
    """Several datasets' caches as one, in the given order; with more than one, names and groups are prefixed by
    the dataset (a group never spans two sites), and `sites` says where each image came from."""
    sites = list(caches)
    prefix = (lambda site, values: np.array([f"{site}/{v}" for v in values])) if len(sites) > 1 else \
        (lambda site, values: values)
    offsets = np.cumsum([0] + [len(c) for c in caches.values()])[:-1]
    merged = {}
    for key in ("inputs", "targets", "categories", "crops", "scales", "offsets", "inners", "shapes"):
        merged[key] = np.concatenate([getattr(c, key) for c in caches.values()])
    merged["names"] = np.concatenate([prefix(site, c.names) for site, c in caches.items()])
    merged["groups"] = np.concatenate([prefix(site, c.groups) for site, c in caches.items()])
    merged["sites"] = np.concatenate([np.full(len(c), site) for site, c in caches.items()])
    merged["boxes"] = np.concatenate([c.boxes + np.array([start, 0, 0, 0, 0])
                                      for start, c in zip(offsets, caches.values())]).astype(np.int64)
    return CachedSet(**merged)


def build_cache(cases: Iterable[Case], size: int, modality: str, crop_to_valid: bool = True) -> CachedSet:
    from branet_pacs.models.detector import letterbox, resize_array

    inputs, targets, meta, boxes = [], [], [], []
    for index, case in enumerate(cases):
        image = case.pixels()
        valid = detection_region(image, modality, case.tags.get("view"))
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
