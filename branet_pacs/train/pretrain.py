"""`branet pretrain`: self-supervised (SimCLR) pretraining of the classifier's ResNet18 on unlabelled images.

Why: no ImageNet or RadImageNet weights can be had for this product, and the labelled ROIs are few (1,304 CBIS-DDSM
masses). An archive's own images, without any label, can teach the network what breast tissue looks like first:
two random views of one patch (crop, zoom, turn, gamma, contrast, blur, noise: `view_settings`) must map close
together and away from every other patch in the batch (NT-Xent loss, Chen et al. 2020, "A Simple Framework for
Contrastive Learning of Visual Representations"). `branet train --init OUT/backbone.safetensors` then starts every
fold from that network instead of a random or an ultrasound one.

Patches (`patch_bank`): for each image of the datasets given, `patches_per_image` square windows at random places
inside the breast (mammograms: `imaging.breast.breast_mask`; ultrasound: the whole frame), sides drawn log-uniform
between `side_range` of the image width, and, when the dataset marks lesions, each lesion's own ROI window. All are
cut through the one ROI code path (`imaging.roi.extract_roi`, each crop its own 1st-99th percentile window). No
label (benign/malignant) is read. Images that cannot be read are listed with the reason in pretrain.json.

Outputs in OUT: `backbone.safetensors` (the ResNet18 without its head, 1-channel stem, torchvision key names),
`pretrain.json` (settings, data, loss history, time), `patches.npz` (the patch bank, reused when the dataset
folders and patch settings are the same: delete it after changing a folder's images), `checkpoint.pt` (resume
after a stop; read with weights_only=True).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from branet_pacs.datasets.cases import Case, load_gray
from branet_pacs.datasets.readers import read_dataset
from branet_pacs.imaging.breast import breast_mask
from branet_pacs.imaging.roi import DEFAULT_MARGIN, ROI_SIZE, extract_roi, roi_to_uint8
from branet_pacs.models.classifier import build_resnet18
from branet_pacs.models.runtime import configure_torch
from branet_pacs.train.augment import WIDE_CONTRAST, WIDE_GAMMA, AugmentSettings, augment_rois, augment_settings
from branet_pacs.types import Box

log = logging.getLogger(__name__)

BACKBONE_FILE = "backbone.safetensors"
REPORT_FILE = "pretrain.json"
BANK_FILE = "patches.npz"
CHECKPOINT_FILE = "checkpoint.pt"
BANK_VERSION = 1
BACKBONE_FORMAT = "branet-resnet18-backbone"   # safetensors metadata "format" of what `pretrain` writes


@dataclass(frozen=True)
class PretrainSettings:
    modality: str = "mg"
    patches_per_image: int = 16
    side_range: tuple[float, float] = (0.06, 0.35)   # random window side / image width (CBIS-DDSM ROIs: 0.08-0.3)
    lesion_windows: bool = True     # add each marked lesion's ROI window (its place only; never its label)
    size: int = 96                  # side the views are trained at (the classifier is fine-tuned at 128)
    batch_size: int = 128           # patches per step (two views each: 2x images through the network)
    steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2
    projection_dim: int = 128
    seed: int = 0
    threads: int = 0
    checkpoint_every: int = 50


def view_settings(modality: str) -> AugmentSettings:
    """The two views' random transforms: the modality's training augmentation (`augment_settings`; MG turns and
    flips both ways, US keeps the skin on top), widened to what contrastive learning needs: zoom into up to half the
    patch, shifts of a fifth, film-density gamma/contrast, blur and noise."""
    return replace(augment_settings(modality), scale=(1.0, 2.0), translate=0.2, rotate_deg=20.0,
                   gamma=WIDE_GAMMA, contrast=WIDE_CONTRAST, brightness=0.1, blur=1.5, noise=0.03)


# --------------------------------------------------------------------------------------------- patch bank
def random_windows(region: np.ndarray, count: int, side_range: tuple[float, float],
                   rng: np.random.Generator) -> list[Box]:
    """`count` square windows centred on random pixels of `region` (bool (h, w)), sides log-uniform in
    `side_range` x the image width."""
    rows, cols = np.nonzero(region)
    if rows.size == 0:
        return []
    width = region.shape[1]
    picks = rng.integers(0, rows.size, size=count)
    sides = np.exp(rng.uniform(math.log(side_range[0]), math.log(side_range[1]), size=count)) * width
    boxes = []
    for pick, side in zip(picks, sides):
        half = max(4, int(round(side / 2)))
        cx, cy = int(cols[pick]), int(rows[pick])
        boxes.append((cx - half, cy - half, cx + half, cy + half))
    return boxes


def image_patches(case: Case, modality: str, settings: PretrainSettings, rng: np.random.Generator) -> np.ndarray:
    """uint8 (n, 128, 128) patches of one image: random windows in the breast, then the lesions' ROI windows."""
    image = load_gray(case.path, case.row_scale)
    region = breast_mask(image) if modality.lower() == "mg" else np.ones(image.shape, dtype=bool)
    rois = [extract_roi(image, box, margin=0.0) for box in
            random_windows(region, settings.patches_per_image, settings.side_range, rng)]
    if settings.lesion_windows:
        rois += [extract_roi(image, lesion.box, margin=DEFAULT_MARGIN) for lesion in case.lesions]
    return np.stack([roi_to_uint8(r) for r in rois]) if rois else np.zeros((0, ROI_SIZE, ROI_SIZE), np.uint8)


def _bank_signature(datasets: Sequence[tuple[str, Path]], settings: PretrainSettings) -> dict:
    return {"version": BANK_VERSION, "datasets": [[name, str(Path(src).resolve())] for name, src in datasets],
            "patches_per_image": settings.patches_per_image, "side_range": list(settings.side_range),
            "lesion_windows": settings.lesion_windows, "seed": settings.seed}


def patch_bank(datasets: Sequence[tuple[str, Path]], settings: PretrainSettings, out: Path,
               quiet: bool = False) -> tuple[np.ndarray, dict]:
    """The patches of every image of `datasets` (uint8 (N, 128, 128)) and a record of what was read and skipped;
    cached in OUT/patches.npz for the same dataset folders and patch settings (keyed on paths, not contents)."""
    signature = _bank_signature(datasets, settings)
    cached = out / BANK_FILE
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as saved:
            record = json.loads(str(saved["record"]))
            if record["signature"] == signature:
                return saved["patches"], record
    rng = np.random.default_rng(settings.seed)
    chunks, skipped, images = [], [], 0
    for name, src in datasets:
        cases = read_dataset(name, src)
        for case in tqdm(cases, desc=f"patches {name}", disable=quiet, unit="image"):
            if not case.path.is_file():
                skipped.append({"file": str(case.path), "reason": "image file missing"})
                continue
            try:
                chunks.append(image_patches(case, settings.modality, settings, rng))
                images += 1
            except (OSError, ValueError) as exc:   # unreadable or not a 2-D image: recorded, the rest goes on
                skipped.append({"file": str(case.path), "reason": f"{type(exc).__name__}: {exc}"})
    patches = np.concatenate(chunks) if chunks else np.zeros((0, ROI_SIZE, ROI_SIZE), np.uint8)
    record = {"signature": signature, "images": images, "patches": int(patches.shape[0]), "skipped": skipped}
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (BANK_FILE + ".tmp.npz")
    np.savez(tmp, patches=patches, record=np.array(json.dumps(record)))
    tmp.replace(cached)
    return patches, record


# --------------------------------------------------------------------------------------------- contrastive model
class ContrastiveNet(nn.Module):
    """The classifier's ResNet18 without its head (`backbone`, 512 features) and SimCLR's projection MLP, which is
    thrown away after pretraining."""

    def __init__(self, projection_dim: int = 128) -> None:
        super().__init__()
        self.backbone = build_resnet18()
        self.backbone.fc = nn.Identity()
        self.projection = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                        nn.Linear(512, projection_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.backbone(x))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, float]:
    """NT-Xent loss of two views' projections (n, d) (row i of z1 and z2: one patch), and the share of views whose
    nearest other view is their partner (how well the pretext task is solved)."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    loss = F.cross_entropy(similarity, partner)
    accuracy = float((similarity.argmax(1) == partner).float().mean())
    return loss, accuracy


def two_views(patches: torch.Tensor, settings: AugmentSettings, size: int,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independently transformed views of uint8 patches (n, H, W), as (n, 1, size, size) in [-1, 1]."""
    x = (patches.float() / 127.5 - 1.0)[:, None]
    views = []
    for _ in range(2):
        view = augment_rois(x, settings, generator)
        if view.shape[-1] != size:
            view = F.interpolate(view, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        views.append(view.contiguous(memory_format=torch.channels_last))
    return views[0], views[1]


def _lr_factor(step: int, total: int) -> float:
    """Linear warm-up over the first 5 % of the steps, then cosine decay to zero."""
    warmup = max(1, total // 20)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def backbone_state(net: ContrastiveNet) -> dict[str, torch.Tensor]:
    """The backbone's weights under the classifier's key names, without any `fc.` key (what `--init` reads)."""
    return {key: value.detach().float().cpu().contiguous() for key, value in net.backbone.state_dict().items()}


def backbone_description(path: str | Path) -> str | None:
    """What a `branet pretrain` backbone is, from its own metadata (for model cards); None for any other file."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    if meta.get("format") != BACKBONE_FORMAT:
        return None
    return (f"self-supervised {meta.get('method', '')} backbone: {meta.get('steps', '?')} steps on "
            f"{meta.get('patches', '?')} unlabelled patches of {meta.get('images', '?')} images "
            f"({meta.get('datasets', '?')}), no labels read")


def pretrain(datasets: Sequence[tuple[str, Path]], out: str | Path, settings: PretrainSettings, *,
             resume: bool = False, quiet: bool = False) -> dict:
    """Build (or reuse) the patch bank, run `settings.steps` SimCLR steps (resumable), write the backbone and the
    report; returns the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    configure_torch(settings.threads)
    started = time.time()
    patches, bank = patch_bank(datasets, settings, out, quiet)
    if patches.shape[0] < 2:
        raise ValueError(f"only {patches.shape[0]} patches could be cut from the data given; nothing to learn from")
    bank_s = time.time() - started
    torch.manual_seed(settings.seed)
    net = ContrastiveNet(settings.projection_dim).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, settings.steps))
    generator = torch.Generator().manual_seed(settings.seed)
    history: list[dict] = []
    step, train_s = 0, 0.0
    checkpoint = out / CHECKPOINT_FILE
    settings_record = dataclasses.asdict(settings)
    if resume and checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        saved = json.loads(state["settings"])
        if {k: v for k, v in saved.items() if k != "threads"} != \
                {k: v for k, v in json.loads(json.dumps(settings_record)).items() if k != "threads"}:
            raise ValueError(f"{checkpoint} was written with other settings; use another --out or drop --resume")
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        step, train_s, history = int(state["step"]), float(state["train_s"]), json.loads(state["history"])
    views = view_settings(settings.modality)
    bank_tensor = torch.from_numpy(patches)
    batch = min(settings.batch_size, bank_tensor.shape[0])
    net.train()
    progress = tqdm(total=settings.steps, initial=step, desc="pretrain", disable=quiet, unit="step")
    window_loss, window_acc, window_start = [], [], time.time()
    while step < settings.steps:
        index = torch.randint(0, bank_tensor.shape[0], (batch,), generator=generator)
        v1, v2 = two_views(bank_tensor[index], views, settings.size, generator)
        z = net(torch.cat([v1, v2]))
        loss, accuracy = nt_xent(z[:batch], z[batch:], settings.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        window_loss.append(float(loss.detach()))
        window_acc.append(accuracy)
        progress.update(1)
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            train_s += time.time() - window_start
            history.append({"step": step, "loss": float(np.mean(window_loss)),
                            "pair_accuracy": float(np.mean(window_acc)), "lr": scheduler.get_last_lr()[0],
                            "seconds": round(train_s, 1)})
            log.info("pretrain step %d: loss %.3f, pair accuracy %.3f", step, history[-1]["loss"],
                     history[-1]["pair_accuracy"])
            progress.set_postfix(loss=f"{history[-1]['loss']:.3f}", acc=f"{history[-1]['pair_accuracy']:.2f}")
            _save_checkpoint(checkpoint, net, optimizer, scheduler, generator, step, train_s, history,
                             settings_record)
            window_loss, window_acc, window_start = [], [], time.time()
    progress.close()
    save_file(backbone_state(net), str(out / BACKBONE_FILE),
              metadata={"format": BACKBONE_FORMAT, "method": "SimCLR", "steps": str(step),
                        "patches": str(bank["patches"]), "images": str(bank["images"]),
                        "datasets": ", ".join(name for name, _ in bank["signature"]["datasets"])})
    report = {"method": "SimCLR (NT-Xent), projection MLP dropped", "settings": settings_record,
              "data": {k: v for k, v in bank.items() if k != "signature"} | {"datasets": bank["signature"]["datasets"]},
              "view_augmentation": dataclasses.asdict(views), "steps": step, "history": history,
              "bank_seconds": round(bank_s, 1), "train_seconds": round(train_s, 1),
              "threads": torch.get_num_threads(), "backbone": BACKBONE_FILE,
              "labels_read": False}
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _save_checkpoint(path: Path, net: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LambdaLR, generator: torch.Generator, step: int,
                     train_s: float, history: list, settings: dict) -> None:
    state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "generator": generator.get_state(), "step": step, "train_s": train_s, "history": json.dumps(history),
             "settings": json.dumps(settings)}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
