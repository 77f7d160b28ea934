"""`branet train-detector` and `branet evaluate-proposals`: train, cross-validate and ship the lesion detector.

Data: BUSI (`--data busi SRC`: benign, malignant AND normal images; the union of an image's masks is the target,
normal images teach the background) or mini-MIAS (`--data mias SRC`: disk masks from centre + radius, origin
bottom-left so row = 1024 - Y; films with an abnormality but no centre are left out; normal films are negatives;
the breast mask from `branet_pacs.imaging.breast` is the valid region, as in the pipeline).

Every image is letterboxed once (`branet_pacs.models.detector.letterbox`, the inference code path) into a cache
under the work folder, so an epoch is only augmentation + forward/backward on small arrays. Cross-validation is
stratified by category (BUSI has no patient ids) or grouped by patient (MIAS: films 2k-1 and 2k are one woman).
Each fold checkpoints every epoch (`--resume` continues), keeps its last epoch (no selection on the held-out fold),
and predicts its held-out images; the proposal metrics are computed on those out-of-fold heatmaps. The shipped
detector is the ensemble of the fold models (mean heatmap), so nothing in it was fitted on all data at once and
the cross-validated figures describe its members.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DEFAULTS = {
    "US": {"size": 112, "epochs": 36, "crop": 0, "folds": 3, "repeats": 1},
    "MG": {"size": 256, "epochs": 32, "crop": 128, "folds": 3, "repeats": 2},
}
SCORE_SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
SEGMENTATION_REPORT = "proposals_litemedsam.json"   # written by `branet evaluate-proposals`, read into the card
CITATIONS = {
    "busi": ("BUSI — Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A. Dataset of breast ultrasound images. Data in Brief 28 "
             "(2020) 104863. doi:10.1016/j.dib.2019.104863 (CC BY 4.0)."),
    "mias": ("mini-MIAS — Suckling J et al. The Mammographic Image Analysis Society digital mammogram database. "
             "Exerpta Medica, International Congress Series 1069 (1994) 375-378. Research use only (MIAS licence)."),
}


# --- data --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One training image: pixels in [0, 1], one boolean mask per lesion (none for normal images)."""

    name: str
    group: str
    category: str                      # "benign" | "malignant" | "normal"
    image: np.ndarray
    lesions: tuple[np.ndarray, ...]
    valid: np.ndarray | None = None    # MG breast mask


def _read_gray(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def _natural_key(text: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def iter_busi(src: Path) -> Iterator[Case]:
    """BUSI layout: SRC/<class>/<name>.png with masks SRC/<class>/masks/<name>_mask*.png (one per lesion)."""
    from PIL import Image

    for category in ("benign", "malignant", "normal"):
        folder = Path(src) / category
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.png"), key=lambda p: _natural_key(p.name)):
            image = _read_gray(path)
            lesions = []
            mask_dir = folder / "masks"
            candidates = list(mask_dir.glob(f"{glob_escape(path.stem)}_mask*.png")) or \
                list(folder.glob(f"{glob_escape(path.stem)}_mask*.png"))
            for mask_path in sorted(candidates, key=lambda p: _natural_key(p.name)):
                with Image.open(mask_path) as img:
                    mask = np.asarray(img.convert("L")) > 127
                if mask.shape != image.shape:
                    raise ValueError(f"{mask_path.name}: mask shape {mask.shape} differs from image {image.shape}")
                if mask.any():
                    lesions.append(mask)
            if category != "normal" and not lesions:
                log.warning("BUSI %s/%s has no non-empty mask: left out", category, path.name)
                continue
            yield Case(name=f"{category}/{path.stem}", group=f"{category}/{path.stem}", category=category,
                       image=image, lesions=tuple(lesions if category != "normal" else ()))


def glob_escape(text: str) -> str:
    """Escape glob metacharacters ('benign (1)' has none, but other datasets may use brackets)."""
    return re.sub(r"([\[\]*?])", r"[\1]", text)


@dataclass(frozen=True)
class MiasLesion:
    category: str      # CIRC, SPIC, ...
    severity: str      # B | M
    x: int | None
    y: int | None
    radius: int | None


def read_mias_info(path: Path) -> dict[str, list[MiasLesion]]:
    """REFNUM -> lesions ([] for normal films); lines: REFNUM BG CLASS [SEVERITY [X Y RADIUS]]."""
    films: dict[str, list[MiasLesion]] = {}
    for line in Path(path).read_text(encoding="latin-1").splitlines():
        parts = line.split()
        if not parts or line.lstrip().startswith("#") or not re.fullmatch(r"mdb\d+", parts[0]):
            continue
        films.setdefault(parts[0], [])
        if len(parts) < 3 or parts[2] == "NORM":
            continue
        severity = parts[3] if len(parts) > 3 else ""
        coords = parts[4:7]
        if len(coords) == 3 and all(c.lstrip("-").isdigit() for c in coords):
            x, y, r = (int(c) for c in coords)
        else:
            x = y = r = None
        films[parts[0]].append(MiasLesion(parts[2], severity, x, y, r))
    return films


def mias_patient(refnum: str) -> str:
    """Left/right films of one woman are consecutive numbers: mdb001+mdb002 -> p001."""
    number = int(refnum[3:])
    return f"p{(number + 1) // 2:03d}"


def mias_excluded(src: Path) -> list[str]:
    """Films present in SRC with an abnormality that has no centre (cannot be boxed)."""
    info = read_mias_info(Path(src) / "Info.txt")
    return sorted(r for r, lesions in info.items()
                  if any(lesion.x is None for lesion in lesions) and (Path(src) / f"{r}.png").is_file())


def iter_mias(src: Path) -> Iterator[Case]:
    """mini-MIAS films with disk masks (row = height - Y); films with an abnormality lacking a centre are skipped."""
    from branet_pacs.imaging.breast import breast_mask

    info = read_mias_info(Path(src) / "Info.txt")
    for refnum in sorted(info):
        path = Path(src) / f"{refnum}.png"
        if not path.is_file():
            continue
        lesions_info = info[refnum]
        if any(lesion.x is None for lesion in lesions_info):
            continue
        image = _read_gray(path)
        h, w = image.shape
        rows, cols = np.ogrid[:h, :w]
        lesions = []
        for lesion in lesions_info:
            cy, cx, r = h - lesion.y, lesion.x, max(lesion.radius or 0, 1)
            lesions.append((rows - cy) ** 2 + (cols - cx) ** 2 <= r * r)
        if not lesions_info:
            category = "normal"
        else:
            category = "malignant" if any(lesion.severity == "M" for lesion in lesions_info) else "benign"
        yield Case(name=refnum, group=mias_patient(refnum), category=category, image=image,
                   lesions=tuple(lesions), valid=breast_mask(image))


# --- letterboxed cache -------------------------------------------------------------------------------------------


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

    def gt_boxes(self, index: int) -> list[tuple[int, int, int, int]]:
        rows = self.boxes[self.boxes[:, 0] == index]
        return [tuple(int(v) for v in row[1:]) for row in rows]

    def has_lesion(self) -> np.ndarray:
        return self.categories != "normal"

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **{k: v for k, v in asdict(self).items()})
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "CachedSet":
        with np.load(path, allow_pickle=False) as data:
            return cls(**{k: data[k] for k in data.files})


def build_cache(cases: Iterator[Case], size: int, crop_to_valid: bool = True) -> CachedSet:
    from branet_pacs.imaging.geometry import mask_box
    from branet_pacs.models.detector import letterbox, resize_array

    inputs, targets, meta, boxes = [], [], [], []
    for index, case in enumerate(cases):
        x, geo = letterbox(case.image, case.valid, size, crop_to_valid)
        union = np.zeros(case.image.shape, dtype=bool)
        for lesion in case.lesions:
            union |= lesion
            box = mask_box(lesion)
            if box is not None:
                boxes.append((index, *box))
        if case.valid is not None:
            union &= case.valid
        target = np.zeros((size, size), dtype=np.float32)
        x0, y0, x1, y1 = geo.crop
        rows, cols = geo.inner_slice()
        target[rows, cols] = resize_array(union[y0:y1, x0:x1].astype(np.float32), (geo.inner[1], geo.inner[0]))
        inputs.append(x.astype(np.float16))
        targets.append(np.clip(target, 0, 1).astype(np.float16))
        meta.append((case.name, case.group, case.category, geo, case.image.shape))
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


# --- training ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    modality: str = "US"
    size: int = 128
    epochs: int = 30
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    crop: int = 0                  # train on random crop x crop windows of the letterboxed input (0 = whole input)
    lesion_crop_p: float = 0.6     # chance that a crop of a lesion image is centred near a lesion
    repeats: int = 1               # times each training image is drawn per epoch (with crops: different windows)
    seed: int = 0
    channels: tuple[int, ...] = (16, 32, 64, 128)
    val_every: int = 5             # held-out loss/Dice every this many epochs (and after the last)


def augment(x, y, generator, settings: TrainSettings):
    """Flips, small rotations, zoom 0.75-1.33x, shifts; gamma, contrast, brightness, blur, noise (all batched).

    The valid channel moves with the image and is re-binarised; intensities outside it stay 0, as at inference.
    """
    import torch
    import torch.nn.functional as F

    n = x.shape[0]

    def uniform(lo: float, hi: float):
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


def detection_loss(logits, target):
    """BCE + soft Dice over the whole batch (a batch-level Dice stays defined when most images are empty)."""
    import torch
    import torch.nn.functional as F

    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    dice = 1.0 - (2.0 * (prob * target).sum() + 1.0) / (prob.sum() + target.sum() + 1.0)
    return bce + dice


def _lr_at(step: int, total: int, base: float) -> float:
    warm = max(1, total // 20)
    if step < warm:
        return base * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 1e-2 * base + (base - 1e-2 * base) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _batch_dice(prob, target) -> float:
    pred = (prob >= 0.5).float()
    truth = (target >= 0.5).float()
    denom = float(pred.sum() + truth.sum())
    return 1.0 if denom == 0 else float(2.0 * (pred * truth).sum() / denom)


def evaluate_loss(net, inputs: np.ndarray, targets: np.ndarray, batch_size: int = 32) -> dict[str, float]:
    import torch

    net.eval()
    losses, probs, truths = [], [], []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            x = torch.from_numpy(inputs[start:start + batch_size].astype(np.float32))
            y = torch.from_numpy(targets[start:start + batch_size].astype(np.float32))[:, None]
            logits = net(x)
            losses.append(float(detection_loss(logits, y)) * len(x))
            probs.append(torch.sigmoid(logits))
            truths.append(y)
    return {"loss": sum(losses) / max(1, len(inputs)),
            "dice": _batch_dice(torch.cat(probs), torch.cat(truths)) if probs else float("nan")}


def train_fold(cache: CachedSet, train_idx: np.ndarray, val_idx: np.ndarray, settings: TrainSettings,
               checkpoint: Path, fold: int, resume: bool = True, progress: bool = True):
    """Train one fold model, checkpointing after every epoch; returns (net, history)."""
    import torch
    from tqdm import tqdm

    from branet_pacs.models.detector import TinyUNet

    torch.manual_seed(settings.seed * 1000 + fold)
    net = TinyUNet(settings.channels).to(memory_format=torch.channels_last)  # ~20 % faster convs on CPU
    optimizer = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    history: list[dict[str, float]] = []
    start_epoch = 0
    if resume and checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        history = list(state["history"])
        log.info("fold %d: resumed after epoch %d", fold, start_epoch)
    drawn = len(train_idx) * max(1, settings.repeats)
    steps = max(1, math.ceil(drawn / settings.batch_size))
    total = steps * settings.epochs
    x_all = cache.inputs[train_idx]
    y_all = cache.targets[train_idx]
    for epoch in range(start_epoch, settings.epochs):
        net.train()
        began = time.perf_counter()
        generator = torch.Generator().manual_seed(settings.seed * 100_003 + fold * 1009 + epoch)
        rng = np.random.default_rng(settings.seed * 100_003 + fold * 1009 + epoch)
        order = torch.randperm(drawn, generator=generator).numpy() % len(train_idx)
        running = 0.0
        batches = range(steps)
        if progress:
            batches = tqdm(batches, desc=f"fold {fold} epoch {epoch + 1}/{settings.epochs}", leave=False,
                           mininterval=10)
        for step in batches:
            pick = order[step * settings.batch_size:(step + 1) * settings.batch_size]
            if len(pick) < 2:   # BatchNorm needs two samples
                continue
            if settings.crop:
                xs, ys = sample_crops(x_all[pick].astype(np.float32), y_all[pick].astype(np.float32),
                                      settings.crop, rng, settings.lesion_crop_p)
            else:
                xs, ys = x_all[pick].astype(np.float32), y_all[pick].astype(np.float32)[:, None]
            x, y = augment(torch.from_numpy(xs), torch.from_numpy(ys), generator, settings)
            x = x.contiguous(memory_format=torch.channels_last)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(epoch * steps + step, total, settings.lr)
            loss = detection_loss(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item() * len(pick)
        record = {"epoch": epoch + 1, "train_loss": running / drawn,
                  "seconds": time.perf_counter() - began}
        if len(val_idx) and ((epoch + 1) % max(1, settings.val_every) == 0 or epoch + 1 == settings.epochs):
            val = evaluate_loss(net, cache.inputs[val_idx], cache.targets[val_idx])
            record.update({"val_loss": val["loss"], "val_dice": val["dice"]})
        history.append(record)
        log.info("fold %d epoch %d/%d: %s", fold, epoch + 1, settings.epochs,
                 ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "epoch"))
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = checkpoint.with_suffix(".tmp")
        torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                    "history": history}, tmp)
        tmp.replace(checkpoint)
    net.eval()
    return net, history


def load_fold_net(checkpoint: Path, settings: TrainSettings):
    import torch

    from branet_pacs.models.detector import TinyUNet

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    net = TinyUNet(settings.channels)
    net.load_state_dict(state["model"])
    return net.eval(), int(state["epoch"]), list(state["history"])


def predict_heatmaps(nets, inputs: np.ndarray, flip_tta: bool = True, batch_size: int = 16) -> np.ndarray:
    """Mean probability heatmaps (n, s, s) of `nets` on letterboxed inputs (the detector's inference rule)."""
    import torch

    from branet_pacs.models.detector import HeatmapEnsemble

    model = HeatmapEnsemble(list(nets)).eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            x = torch.from_numpy(inputs[start:start + batch_size].astype(np.float32))
            prob = model(x)
            if flip_tta:
                prob = 0.5 * (prob + model(x.flip(-1)).flip(-1))
            out.append(prob[:, 0].numpy())
    return np.concatenate(out) if out else np.zeros((0,) + inputs.shape[-2:], dtype=np.float32)


# --- splits and metrics ------------------------------------------------------------------------------------------


def make_folds(cache: CachedSet, folds: int, seed: int, grouped: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (lesion category) k-fold; grouped by patient when `grouped` (scikit-learn)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    indices = np.arange(len(cache))
    labels = cache.categories
    if grouped:
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        return [(tr, va) for tr, va in splitter.split(indices, labels, cache.groups)]
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(tr, va) for tr, va in splitter.split(indices, labels)]


def _iou(a, b) -> float:
    from branet_pacs.imaging.geometry import box_iou

    return box_iou(tuple(a), tuple(b))


def case_proposals(cache: CachedSet, index: int, heat: np.ndarray, spec, *, max_proposals: int = 3,
                   min_score: float = 0.0):
    from branet_pacs.models.detector import proposals_from_model_heatmap

    valid = cache.inputs[index, 1].astype(np.float32) > 0.5
    return proposals_from_model_heatmap(heat, valid, cache.geometry(index), tuple(cache.shapes[index]), spec,
                                        max_proposals=max_proposals, min_score=min_score)


def proposal_metrics(cache: CachedSet, heatmaps: dict[int, np.ndarray], spec, *, min_score: float,
                     max_proposals: int = 3) -> dict:
    """Hit rates (any of the top-k proposals with IoU >= 0.5 / 0.3 with a true lesion box), top-1 hit rate,
    lesion recall, images with no proposal, false proposals per normal image and per lesion image."""
    per_category: dict[str, dict[str, list[float]]] = {}
    for index, heat in heatmaps.items():
        category = str(cache.categories[index])
        proposals = case_proposals(cache, index, heat, spec, max_proposals=max_proposals, min_score=min_score)
        stats = per_category.setdefault(category, {})
        stats.setdefault("proposals", []).append(len(proposals))
        gts = cache.gt_boxes(index)
        if not gts:
            continue
        ious = np.array([[_iou(p.box, g) for g in gts] for p in proposals]).reshape(len(proposals), len(gts))
        best = float(ious.max()) if ious.size else 0.0
        stats.setdefault("hit50", []).append(best >= 0.5)
        stats.setdefault("hit30", []).append(best >= 0.3)
        stats.setdefault("top1_hit50", []).append(bool(ious.size and ious[0].max() >= 0.5))
        stats.setdefault("best_iou", []).append(best)
        stats.setdefault("none", []).append(len(proposals) == 0)
        stats.setdefault("false", []).append(int((ious.max(axis=1) < 0.3).sum()) if ious.size else 0)
        for g in range(len(gts)):
            stats.setdefault("lesion_recall50", []).append(bool(ious.size and ious[:, g].max() >= 0.5))

    def summary(groups: list[str]) -> dict:
        merged: dict[str, list[float]] = {}
        for name in groups:
            for key, values in per_category.get(name, {}).items():
                merged.setdefault(key, []).extend(values)
        out: dict[str, float | int] = {}
        if "hit50" in merged:
            n = len(merged["hit50"])
            out.update({
                "lesion_images": n,
                "hit_rate_iou50": float(np.mean(merged["hit50"])),
                "hit_rate_iou30": float(np.mean(merged["hit30"])),
                "top1_hit_rate_iou50": float(np.mean(merged["top1_hit50"])),
                "lesion_recall_iou50": float(np.mean(merged["lesion_recall50"])),
                "mean_best_iou": float(np.mean(merged["best_iou"])),
                "no_proposal_fraction": float(np.mean(merged["none"])),
                "false_proposals_per_lesion_image": float(np.mean(merged["false"])),
            })
        elif "proposals" in merged:
            props = np.array(merged["proposals"])
            out.update({"normal_images": int(len(props)),
                        "false_proposals_per_normal_image": float(props.mean()),
                        "normal_images_with_proposal": float((props > 0).mean())})
        return out

    lesion_cats = [c for c in ("benign", "malignant") if c in per_category]
    result = {"min_score": min_score, "max_proposals": max_proposals, "lesion": summary(lesion_cats)}
    for category in lesion_cats:
        result[category] = summary([category])
    if "normal" in per_category:
        result["normal"] = summary(["normal"])
    return result


def heatmap_dice(cache: CachedSet, heatmaps: dict[int, np.ndarray]) -> dict:
    """Mean per-image Dice of the thresholded (0.5) heatmap vs the letterboxed lesion mask, lesion images only."""
    values = []
    for index, heat in heatmaps.items():
        target = cache.targets[index].astype(np.float32) >= 0.5
        if not target.any():
            continue
        pred = heat >= 0.5
        values.append(2.0 * float((pred & target).sum()) / float(pred.sum() + target.sum()))
    return {"mean": float(np.mean(values)) if values else float("nan"), "n": len(values)}


def tune_extraction(cache: CachedSet, heatmaps: dict[int, np.ndarray], spec):
    """Pick region_level and expand maximising the top-1 hit rate (IoU >= 0.5) on out-of-fold heatmaps."""
    best = None
    for level in (0.3, 0.4, 0.5, 0.6):
        for expand in (0.0, 0.05, 0.1):
            candidate = replace(spec, region_level=level, expand=expand)
            metrics = proposal_metrics(cache, heatmaps, candidate, min_score=0.0, max_proposals=1)["lesion"]
            key = (metrics["top1_hit_rate_iou50"], metrics["mean_best_iou"])
            log.info("extraction region_level %.2f expand %.2f: top-1 hit %.3f, mean IoU %.3f",
                     level, expand, *key)
            if best is None or key > best[0]:
                best = (key, candidate)
    return best[1]


# --- the command ---------------------------------------------------------------------------------------------------


def _settings_record(settings: TrainSettings, args: argparse.Namespace) -> dict:
    return {"settings": asdict(settings), "data": args.data[0], "folds": args.folds}


def train_detector(args: argparse.Namespace) -> int:
    import os

    from branet_pacs.models.runtime import configure_torch

    kind, src = args.data[0].lower(), Path(args.data[1])
    modality = args.modality.upper()
    if kind not in ("busi", "mias"):
        raise SystemExit(f"--data: unknown dataset '{kind}' (busi or mias)")
    defaults = DEFAULTS[modality]
    folds = args.folds or defaults["folds"]
    args.folds = folds
    settings = TrainSettings(modality=modality, size=args.size or defaults["size"],
                             epochs=args.epochs or defaults["epochs"], batch_size=args.batch_size, lr=args.lr,
                             crop=defaults["crop"] if args.crop is None else args.crop, seed=args.seed,
                             repeats=args.repeats or defaults["repeats"])
    if settings.size % 16 or (settings.crop and settings.crop % 16):
        raise SystemExit("--size and --crop must be multiples of 16")
    configure_torch(args.threads)
    out = Path(args.out)
    work = Path(args.work) if args.work else Path("var") / "detector-work" / out.name
    work.mkdir(parents=True, exist_ok=True)
    lock = _lock_work(work)
    try:
        return _train_locked(args, settings, kind, src, out, work)
    finally:
        os.close(lock)


def _train_locked(args: argparse.Namespace, settings: TrainSettings, kind: str, src: Path, out: Path,
                  work: Path) -> int:
    import torch

    from branet_pacs.models.detector import DetectorSpec, save_weights

    modality, folds = settings.modality, args.folds
    record = _settings_record(settings, args)
    record_path = work / "settings.json"
    if args.resume and record_path.exists():
        previous = json.loads(record_path.read_text())
        if previous != json.loads(json.dumps(record)):
            raise SystemExit(f"--resume: settings differ from the run in {work} ({previous} vs {record})")
    elif not args.resume:
        for stale in list(work.glob("fold*.pt")) + list(work.glob("oof-fold*.npz")):
            stale.unlink()
    record_path.write_text(json.dumps(record, indent=2))

    cache_path = work / f"cache-{kind}-{settings.size}.npz"
    excluded = mias_excluded(src) if kind == "mias" else []
    if cache_path.exists():
        cache = CachedSet.load(cache_path)
    else:
        cache = build_cache(iter_busi(src) if kind == "busi" else iter_mias(src), settings.size)
        cache.save(cache_path)
    log.info("%d images (%s), %d lesion boxes; cache %s", len(cache),
             ", ".join(f"{c}: {int((cache.categories == c).sum())}" for c in np.unique(cache.categories)),
             len(cache.boxes), cache_path)

    splits = make_folds(cache, folds, args.seed, grouped=(kind == "mias"))
    spec = DetectorSpec(size=settings.size, channels=settings.channels)
    nets, histories, oof = [], [], {}
    for fold, (train_idx, val_idx) in enumerate(splits):
        checkpoint = work / f"fold{fold}.pt"
        oof_path = work / f"oof-fold{fold}.npz"
        done = checkpoint.is_file() and torch.load(checkpoint, map_location="cpu",
                                                   weights_only=True)["epoch"] >= settings.epochs
        if done and oof_path.is_file():
            net, _, history = load_fold_net(checkpoint, settings)
        else:
            net, history = train_fold(cache, train_idx, val_idx, settings, checkpoint, fold,
                                      resume=args.resume or checkpoint.is_file(), progress=not args.quiet)
            heat = predict_heatmaps([net], cache.inputs[val_idx])
            np.savez(oof_path, index=val_idx, heat=heat.astype(np.float16))
        with np.load(oof_path) as data:
            for index, heat in zip(data["index"], data["heat"]):
                oof[int(index)] = heat.astype(np.float32)
        nets.append(net)
        histories.append(history)
    # summed epoch times, so a resumed run still reports the whole training cost (validation passes excluded)
    train_seconds = sum(h["seconds"] for history in histories for h in history)

    spec = tune_extraction(cache, oof, spec)
    threshold = float(args.min_score)
    sweep = [proposal_metrics(cache, oof, spec, min_score=s) for s in sorted(set(SCORE_SWEEP) | {threshold})]
    top1 = proposal_metrics(cache, oof, spec, min_score=0.0, max_proposals=1)
    metrics = {
        "dataset": kind, "modality": modality, "images": len(cache),
        "categories": {c: int((cache.categories == c).sum()) for c in np.unique(cache.categories)},
        "lesion_boxes": int(len(cache.boxes)), "excluded_films_without_centre": excluded,
        "cross_validation": {"folds": folds, "grouped_by_patient": kind == "mias", "seed": args.seed,
                             "fold_sizes": [int(len(v)) for _, v in splits], "model": "last epoch of each fold"},
        "settings": asdict(settings), "extraction": asdict(spec), "recommended_min_score": threshold,
        "out_of_fold": {"heatmap_dice_at_0.5": heatmap_dice(cache, oof),
                        "top1_any_score": top1, "by_min_score": sweep},
        "training_seconds": round(train_seconds, 1),
        "history": histories,
    }
    _write_oof_proposals(work / "oof-proposals.json", cache, oof, spec)
    out.mkdir(parents=True, exist_ok=True)
    weights = save_weights(out / "weights.safetensors", nets, spec)
    (out / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=2) + "\n")
    _plot_history(histories, out / "training_curves.png")
    version = args.version
    segmentation = out / SEGMENTATION_REPORT
    _write_card(out / "MODEL_CARD.md", out.name, version, modality, kind, metrics,
                json.loads(segmentation.read_text()) if segmentation.is_file() else None)
    _register(out, weights, version, modality, spec, threshold, len(nets))
    log.info("wrote %s (%d fold models), metrics.json, MODEL_CARD.md; registered in %s/manifest.json",
             weights, len(nets), out.parent)
    lesion = next(m for m in sweep if m["min_score"] == threshold)["lesion"]
    print(f"{out.name}: out-of-fold hit rate @IoU0.5 {lesion['hit_rate_iou50']:.3f} (top-3, min_score {threshold}), "
          f"top-1 {top1['lesion']['top1_hit_rate_iou50']:.3f}; training {train_seconds / 60:.1f} min")
    return 0


def _lock_work(work: Path):
    """An exclusive lock on the work folder: two runs must not write the same checkpoints."""
    import fcntl
    import os

    fd = os.open(work, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SystemExit(f"another train-detector run is using {work}") from None
    return fd


def _write_oof_proposals(path: Path, cache: CachedSet, oof: dict[int, np.ndarray], spec) -> None:
    """Out-of-fold top-3 proposals (any score) per image, for `branet evaluate-proposals`."""
    rows = {}
    for index, heat in sorted(oof.items()):
        proposals = case_proposals(cache, index, heat, spec, max_proposals=3, min_score=0.0)
        rows[str(cache.names[index])] = {
            "category": str(cache.categories[index]),
            "truth": [list(b) for b in cache.gt_boxes(index)],
            "proposals": [{"box": list(p.box), "score": round(float(p.score), 4)} for p in proposals]}
    path.write_text(json.dumps(rows, indent=1))


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else round(float(value), 6)
    return value


def _plot_history(histories: list[list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for fold, history in enumerate(histories):
        epochs = [h["epoch"] for h in history]
        axes[0].plot(epochs, [h["train_loss"] for h in history], color=f"C{fold}", label=f"fold {fold} train")
        val = [h for h in history if "val_loss" in h]
        if val:
            axes[0].plot([h["epoch"] for h in val], [h["val_loss"] for h in val], color=f"C{fold}", ls="--", marker=".")
            axes[1].plot([h["epoch"] for h in val], [h["val_dice"] for h in val], color=f"C{fold}", marker=".",
                         label=f"fold {fold}")
    axes[0].set(xlabel="epoch", ylabel="BCE + Dice loss", title="loss (dashed: held-out fold)")
    axes[1].set(xlabel="epoch", ylabel="pixel Dice @0.5", title="held-out heatmap Dice")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _register(out: Path, weights: Path, version: str, modality: str, spec, threshold: float, members: int) -> None:
    from branet_pacs.models.manifest import ModelEntry, file_sha256, register_model

    models_dir = out.parent
    entry = ModelEntry(
        name=out.name, kind="detector", modality=modality, version=version,
        file=str(weights.resolve().relative_to(models_dir.resolve())), sha256=file_sha256(weights),
        threshold=threshold,
        input={"size": spec.size, "channels": ["image", "valid_mask"], "letterbox": True,
               "intensity": "1st-99th percentile of valid pixels -> [0, 1], 0 outside the valid mask"},
        extra={"architecture": f"TinyUNet stride-2 stem, widths {list(spec.channels)}", "members": members,
               "output": "lesion probability heatmap", "region_level": spec.region_level, "expand": spec.expand,
               "flip_tta": spec.flip_tta, "threshold_meaning": "recommended min_score for propose()"})
    register_model(models_dir, entry)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _segmentation_text(report: dict | None) -> str:
    if not report:
        return ("Not measured yet: `branet evaluate-proposals` writes the LiteMedSAM Dice from the out-of-fold top "
                f"proposal vs the true box ({SEGMENTATION_REPORT}).")
    key = next(k for k in report if k.startswith("dice_top_proposal_mean_zero_below_"))
    by = "; ".join(f"{c}: true box {_fmt(v['dice_true_box_mean'])}, top proposal {_fmt(v['dice_top_proposal_mean'])}"
                   f" (n={v['n']})" for c, v in report.get("by_category", {}).items())
    sample = (f"all {report['images']} lesion images" if report["images"] == report["sampled_from"] else
              f"{report['images']} lesion images (random sample of {report['sampled_from']}, seed {report['seed']})")
    return (f"LiteMedSAM on {sample}, Dice against the ground-truth mask: "
            f"**true box {_fmt(report['dice_true_box_mean'])}"
            f"**, **top out-of-fold proposal {_fmt(report['dice_top_proposal_mean'])}** (median "
            f"{_fmt(report['dice_top_proposal_median'])}); counting images whose top proposal scores below "
            f"{key.rsplit('_', 1)[-1]} as 0: {_fmt(report[key])}. {by}.")


def _write_card(path: Path, name: str, version: str, modality: str, kind: str, metrics: dict,
                segmentation: dict | None = None) -> None:
    cv = metrics["cross_validation"]
    threshold = metrics["recommended_min_score"]
    rows = []
    for m in metrics["out_of_fold"]["by_min_score"]:
        lesion, normal = m["lesion"], m.get("normal", {})
        rows.append(f"| {m['min_score']:.1f} | {_fmt(lesion.get('hit_rate_iou50'))} | "
                    f"{_fmt(lesion.get('hit_rate_iou30'))} | {_fmt(lesion.get('top1_hit_rate_iou50'))} | "
                    f"{_fmt(lesion.get('no_proposal_fraction'))} | "
                    f"{_fmt(lesion.get('false_proposals_per_lesion_image'))} | "
                    f"{_fmt(normal.get('false_proposals_per_normal_image'))} |")
    chosen = next(m for m in metrics["out_of_fold"]["by_min_score"] if m["min_score"] == threshold)
    per_class = " ".join(
        f"{c}: hit@0.5 {_fmt(chosen[c]['hit_rate_iou50'])} (n={chosen[c]['lesion_images']});"
        for c in ("benign", "malignant") if c in chosen)
    top1 = metrics["out_of_fold"]["top1_any_score"]["lesion"]
    s = metrics["settings"]
    ex = metrics["extraction"]
    excluded = metrics.get("excluded_films_without_centre") or []
    data_text = {
        "busi": "BUSI (development 80 % split held here): benign, malignant and normal breast-ultrasound images with "
                "lesion masks; the union of an image's masks is the target, normal images are all-background.",
        "mias": "mini-MIAS films (development 80 % split held here): disk masks from the Info.txt centre and radius "
                "(origin bottom-left, row = 1024 - Y); normal films are all-background; films with an abnormality "
                f"but no centre left out ({', '.join(excluded) or 'none'}). The breast mask limits the input.",
    }[kind]
    text = f"""# {name} — lesion detector ({modality}), version {version}

**Research use only. Not a medical device.** Proposes lesion boxes on a whole {modality} image for the automatic
path of `branet analyze`; a segmenter and the malignancy classifier then work on each proposal.

## Model
Small U-Net ("TinyUNet": stride-2 stem, widths {list(s['channels'])}, BatchNorm, bilinear upsampling) predicting a
lesion-probability heatmap on the whole image letterboxed to {s['size']}x{s['size']} (2 channels: intensity stretched
to the 1st-99th percentile of valid pixels, and the valid mask). The shipped file holds the {cv['folds']} fold
models of the cross-validation; inference averages their heatmaps and the horizontally flipped input's.
Candidates: local maxima of the heatmap >= min_score; region = connected pixels >= {ex['region_level']} x peak;
box = region bounds grown by {ex['expand']} per side, mapped back to image pixels; NMS IoU {ex['nms_iou']}; top-k.
Score = peak probability. Recommended `min_score`: **{threshold}** (the manifest threshold; fixed in advance as
"more likely lesion than not", not tuned; the table shows the trade-off).

## Data
{data_text}
Images: {metrics['images']} ({', '.join(f'{k} {v}' for k, v in metrics['categories'].items())}),
{metrics['lesion_boxes']} lesion boxes. Citation: {CITATIONS[kind]}

## Training
BCE + batch soft-Dice loss; AdamW lr {s['lr']} (warm-up + cosine), weight decay {s['weight_decay']}, batch
{s['batch_size']}, {s['epochs']} epochs{f", random {s['crop']}x{s['crop']} crops (lesion-centred with p={s['lesion_crop_p']})" if s['crop'] else ''};
augmentation: horizontal flip, rotation +-10 deg, zoom 0.75-1.33, shift +-10 %, gamma, contrast, brightness, blur,
noise. Seed {s['seed']}. CPU training time (2 shared cores): {metrics['training_seconds'] / 60:.0f} min.

## Validation ({cv['folds']}-fold, {'grouped by patient, ' if cv['grouped_by_patient'] else ''}stratified by category; last epoch, out-of-fold)
A hit = a proposal with box IoU >= 0.5 (or 0.3) with a ground-truth lesion box (mask bounding box). Top-3 proposals.

| min_score | hit@0.5 | hit@0.3 | top-1 hit@0.5 | no proposal | false/lesion img | false/normal img |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

At min_score {threshold}: {per_class}
Top-1 proposal at any score: hit@0.5 {_fmt(top1['top1_hit_rate_iou50'])}, mean IoU {_fmt(top1['mean_best_iou'])}.
Heatmap Dice (threshold 0.5, lesion images, model resolution): {_fmt(metrics['out_of_fold']['heatmap_dice_at_0.5']['mean'])}.
The extraction settings (region level, expansion) were chosen on these out-of-fold heatmaps (12 combinations), a
mild optimistic bias. Fold members in the ensemble are each validated here; the ensemble itself has no held-out
estimate from this data.

### Segmenting the proposal
{_segmentation_text(segmentation)}

## Intended use and limitations
Research only: a first stage that proposes where to look. It misses lesions (see the table) and proposes false
ones; every output needs a reader. Trained on one public dataset per modality: other scanners, presets, digital
mammography (vs digitised film) and populations will shift its scores. {'BUSI carries no patient ids, so images of one woman may fall in different folds (optimistic). Some BUSI images show caliper marks that can act as shortcuts.' if kind == 'busi' else 'mini-MIAS is small (tens of lesions), digitised film at 200 um, with coarse circular annotations; architectural distortions and asymmetries are hard to box.'}
"""
    path.write_text(text)


# --- LiteMedSAM on proposals -------------------------------------------------------------------------------------


def evaluate_proposals(args: argparse.Namespace) -> int:
    """Dice of LiteMedSAM masks from the top out-of-fold proposal vs from the true box, on BUSI/MIAS masks."""
    from branet_pacs.imaging.geometry import mask_box
    from branet_pacs.models.runtime import configure_torch
    from branet_pacs.models.segmenter import LiteMedSAMSegmenter

    configure_torch(args.threads)
    kind, src = args.data[0].lower(), Path(args.data[1])
    proposals = json.loads((Path(args.work) / "oof-proposals.json").read_text())
    names = sorted(n for n, row in proposals.items() if row["category"] != "normal")
    rng = np.random.default_rng(args.seed)
    if args.limit and len(names) > args.limit:
        names = sorted(rng.choice(names, size=args.limit, replace=False).tolist())
    cases = {c.name: c for c in (iter_busi(src) if kind == "busi" else iter_mias(src)) if c.name in set(names)}
    segmenter = LiteMedSAMSegmenter(args.device)
    rows = []
    for name in names:
        case = cases[name]
        row = proposals[name]
        truth_boxes = [mask_box(m) for m in case.lesions]
        top = row["proposals"][0] if row["proposals"] else None
        boxes = truth_boxes + ([tuple(top["box"])] if top else [])
        embedding = segmenter.embed(case.image)
        masks = segmenter.decode(embedding, boxes)
        box_dice = [_dice(m, t) for m, t in zip(masks, case.lesions)]
        auto = {"dice_top": 0.0, "score": None, "iou_top": 0.0}
        if top:
            ious = [_iou(top["box"], b) for b in truth_boxes]
            target = int(np.argmax(ious))
            auto = {"dice_top": _dice(masks[-1], case.lesions[target]), "score": top["score"],
                    "iou_top": float(ious[target])}
        rows.append({"name": name, "category": case.category, "dice_true_box": float(np.mean(box_dice)),
                     **auto})
        log.info("%s: true-box Dice %.3f, top-proposal Dice %.3f (score %s)", name, rows[-1]["dice_true_box"],
                 auto["dice_top"], auto["score"])
    min_score = args.min_score

    def mean(key: str, subset) -> float:
        return float(np.mean([r[key] for r in subset])) if subset else float("nan")

    gated = [r["dice_top"] if (r["score"] or 0.0) >= min_score else 0.0 for r in rows]
    summary = {
        "dataset": kind, "images": len(rows), "sampled_from": len([n for n, r in proposals.items()
                                                                  if r["category"] != "normal"]),
        "seed": args.seed, "segmenter": segmenter.name,
        "dice_true_box_mean": mean("dice_true_box", rows),
        "dice_top_proposal_mean": mean("dice_top", rows),
        "dice_top_proposal_median": float(np.median([r["dice_top"] for r in rows])) if rows else float("nan"),
        f"dice_top_proposal_mean_zero_below_{min_score}": float(np.mean(gated)) if rows else float("nan"),
        "by_category": {c: {"n": len(sub), "dice_true_box_mean": mean("dice_true_box", sub),
                            "dice_top_proposal_mean": mean("dice_top", sub)}
                        for c in ("benign", "malignant") if (sub := [r for r in rows if r["category"] == c])},
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_jsonable(summary), indent=2) + "\n")
    print(f"{len(rows)} lesion images: LiteMedSAM Dice true box {summary['dice_true_box_mean']:.3f}, "
          f"top proposal {summary['dice_top_proposal_mean']:.3f} (0 when score < {min_score}: "
          f"{summary[f'dice_top_proposal_mean_zero_below_{min_score}']:.3f})")
    return 0


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    denom = float(pred.sum() + truth.sum())
    return 1.0 if denom == 0 else 2.0 * float((pred & truth).sum()) / denom


# --- CLI -----------------------------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-detector", help="train + cross-validate the lesion detector (heatmap U-Net) and register it")
    parser.add_argument("--data", nargs=2, metavar=("DATASET", "SRC"), required=True,
                        help="busi SRC (BUSI folders) or mias SRC (mini-MIAS films + Info.txt)")
    parser.add_argument("--modality", choices=("us", "mg", "US", "MG"), required=True)
    parser.add_argument("--out", required=True, help="models/NAME (weights, metrics, card; manifest in its parent)")
    parser.add_argument("--folds", type=int, default=0, help="cross-validation folds (default 3)")
    parser.add_argument("--epochs", type=int, default=0, help="epochs per fold (default US 36, MG 32)")
    parser.add_argument("--size", type=int, default=0, help="letterboxed input side (default US 112, MG 256)")
    parser.add_argument("--crop", type=int, default=None, help="training crop side (default US 0 = whole, MG 128)")
    parser.add_argument("--repeats", type=int, default=0,
                        help="draws of each training image per epoch (default US 1, MG 2: two crops per film)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0 = all cores)")
    parser.add_argument("--min-score", type=float, default=0.5,
                        help="recommended propose() min_score written to the manifest (fixed in advance, not tuned; "
                             "the card lists the hit rates for other values)")
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--work", default="", help="checkpoints and cache (default var/detector-work/NAME)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in the work folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=train_detector)

    evaluate = subparsers.add_parser(
        "evaluate-proposals", help="LiteMedSAM Dice from the detector's out-of-fold top proposal vs the true box")
    evaluate.add_argument("--data", nargs=2, metavar=("DATASET", "SRC"), required=True)
    evaluate.add_argument("--work", required=True, help="the train-detector work folder (oof-proposals.json)")
    evaluate.add_argument("--out", required=True, help="JSON report")
    evaluate.add_argument("--limit", type=int, default=0, help="random sample of lesion images (0 = all)")
    evaluate.add_argument("--min-score", type=float, default=0.5)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--threads", type=int, default=0)
    evaluate.add_argument("--device", default="auto")
    evaluate.set_defaults(func=evaluate_proposals)
