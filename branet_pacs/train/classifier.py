"""`branet train`: k-fold cross-validated ResNet18 training, then one final model on all data.

Procedure (what MODEL_CARD.md states, `train.cards`):
1. Folds: `datasets.folds.make_folds`, grouped when the dataset has a manifest with groups (patients, duplicate
   images); shuffled with the seed. Synthetic ROIs (`--synthetic`) are added to training folds only.
2. Per fold: AdamW, one warm-up epoch then cosine decay over the epoch cap, class-weighted cross-entropy,
   modality-specific augmentation, validation AUC every epoch, early stopping with `patience`; the best-AUC
   weights give the fold's out-of-fold (OOF) predictions.
3. Threshold: Youden's J (= balanced-accuracy optimum) on the pooled OOF predictions. Per-fold metrics use the
   threshold chosen on the *other* folds' OOF predictions, so no fold is scored with a cut tuned on itself.
4. Shipped model: retrained on all ROIs with the same schedule, stopped at the median of the folds' best epochs
   (one 11 M-parameter network, 22 MB in fp16; a 5-fold ensemble would be five times that in the repository).
5. `--feature-head`: a logistic regression on LiteMedSAM lesion features (`models.feature_head`) is fitted on the
   same training folds; the OOF figures and the threshold are those of the CNN + head combination, the parts are
   reported alone too, and the shipped head is fitted on all ROIs. The CNN's weight beside it is fixed (0.5: the
   logit mean) or, with `--cnn-weight auto`, picked on the out-of-fold predictions (nested for the figures).

Everything resumable: `OUT/checkpoints/fold<k>/last.pt` after each epoch (loaded with weights_only=True),
`done.json` when a fold is finished.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from branet_pacs.datasets.folds import make_folds
from branet_pacs.datasets.rois import RoiSet, load_roi_set, load_roi_sets, read_prepare_info
from branet_pacs.evaluation import metrics as M
from branet_pacs.evaluation import plots
from branet_pacs.imaging.roi import DEFAULT_LESION_BOX, DEFAULT_WINDOW, ROI_SIZE, WINDOW_DESCRIPTIONS
from branet_pacs.models.classifier import MALIGNANT_CLASS, build_resnet18, load_classifier_networks, save_classifier
from branet_pacs.models.feature_head import (DEFAULT_C, EQUAL_WEIGHT, LITEMEDSAM, FeatureHead, combine, input_widths,
                                             nested_cnn_weight, pick_cnn_weight)
from branet_pacs.models.feature_head import INPUTS as HEAD_INPUTS
from branet_pacs.models.manifest import ModelEntry, file_sha256, register_model
from branet_pacs.models.runtime import configure_torch, select_device
from branet_pacs.train.augment import augment_rois, augment_settings
from branet_pacs.train.cards import write_model_card
from branet_pacs.train.lesion_features import roi_features
from branet_pacs.train.pretrain import backbone_description

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.safetensors"
HEAD_FILE = "feature_head.safetensors"
SYNTHETIC_PREFIX = "synthetic:"


@dataclass(frozen=True)
class ClassifierTrainSettings:
    modality: str = "us"
    folds: int = 5
    epochs: int = 40              # cap per fold (the cosine schedule spans it)
    patience: int = 8
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = 0.5
    seed: int = 0
    synthetic_ratio: float = 0.0
    device: str = "auto"
    threads: int = 0
    tta: bool = False             # horizontal-flip test-time augmentation (validation and shipped model)
    precision: str = "auto"       # auto | fp32 | bf16 (autocast for the training step)
    init: str | None = None       # start weights (see `initial_state`), else random
    roi_jitter: float = 0.0       # extra zoom/shift augmentation emulating detector box error (see augment_settings)
    scanner_aug: bool = False     # blur, resolution, depth gain, wider gamma/contrast: another scanner's look
    intensity_aug: bool = False   # wider gamma/contrast only (film density, exposure)
    margin_views: tuple[float, ...] = ()  # ROI margins the pipeline averages at inference (manifest tta_margins)
    split_seed: int | None = None  # seed of the fold split (default: seed); fix it to compare or ensemble inits
    ema: float = 0.0              # decay of an exponential moving average of the weights (0: off); EMA is scored
    mixup: float = 0.0            # Beta(a, a) parameter of mixup between training ROIs (0: off)
    feature_head: bool = False    # also fit the LiteMedSAM-feature head, combined with the CNN in logit space
    feature_head_c: tuple[float, ...] = (DEFAULT_C,)   # its inverse L2 strength, one per input (or one for all)
    feature_head_inputs: tuple[str, ...] = (LITEMEDSAM,)   # what it reads (feature_head.INPUTS), a block each
    cnn_weight: float | None = EQUAL_WEIGHT   # the CNN's weight beside the head in logit space; None: picked on the
                                              # out-of-fold predictions (`feature_head.pick_cnn_weight`)


# --------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class FoldPlan:
    fold: int
    train: tuple[str, ...]         # real ROI files
    synthetic: tuple[str, ...]     # synthetic ROI files (prefixed), training only
    val: tuple[str, ...]


def pick_synthetic(synthetic: RoiSet | None, n_real: int, ratio: float, seed: int) -> np.ndarray:
    """Indices of synthetic ROIs for one training fold: round(ratio * n_real), drawn without replacement."""
    if synthetic is None or ratio <= 0:
        return np.zeros(0, dtype=int)
    n = min(int(round(ratio * n_real)), len(synthetic))
    return np.sort(np.random.default_rng(seed).choice(len(synthetic), size=n, replace=False))


def with_synthetic(x: torch.Tensor, y: torch.Tensor, synthetic: RoiSet | None,
                   index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Training tensors with the chosen synthetic ROIs appended (never called for validation data)."""
    if synthetic is None or index.size == 0:
        return x, y
    return (torch.cat([x, torch.from_numpy(synthetic.pixels[index])]),
            torch.cat([y, torch.from_numpy(synthetic.labels[index])]))


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """bf16 autocast where the hardware does bf16 natively (CUDA, or CPUs with AMX / AVX512-BF16)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return torch.bfloat16 if (" amx_bf16" in flags or " avx512_bf16" in flags) else None


# --------------------------------------------------------------------------------------------- one model
@dataclass
class Run:
    """Mutable state of one training run (a fold or the final model)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator
    ema: AveragedModel | None = None   # the weights that are scored and saved when `ClassifierTrainSettings.ema` > 0
    epoch: int = 0
    best_auc: float = -math.inf
    best_epoch: int = 0
    history: list = dataclasses.field(default_factory=list)


def _new_run(settings: ClassifierTrainSettings, steps_per_epoch: int, seed: int, device: torch.device) -> Run:
    torch.manual_seed(seed)
    model = build_resnet18(settings.dropout)
    if settings.init:
        model.load_state_dict(initial_state(settings.init, settings.dropout))
    model = model.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    total = max(1, settings.epochs * steps_per_epoch)
    warmup = max(1, min(steps_per_epoch, total // 10))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    generator = torch.Generator().manual_seed(seed)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(settings.ema), use_buffers=True) \
        if settings.ema > 0 else None
    return Run(model, optimizer, scheduler, generator, ema)


def initial_state(path: str | Path, dropout: float) -> dict[str, torch.Tensor]:
    """Start weights for `--init`: one of our classifiers, or a ResNet18 in torchvision's layout (e.g. ImageNet).

    Ours: safetensors as written by `save_classifier` (the first member of an ensemble is used), or a backbone
    without any head as `branet pretrain` writes it.
    torchvision's: a state dict with a 3-channel stem and a `fc` head, as safetensors or as a `.pth` file read with
    `torch.load(weights_only=True)` (tensors only, no arbitrary objects). Its stem is summed over the colour
    channels (a grey ROI is R = G = B) and its 1000-class head is dropped, so the 2-class head starts fresh.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            has_head = any(key.startswith("fc.") or ".fc." in key for key in keys)   # ensembles: "member0.fc..."
            if has_head and "fc.weight" not in keys:   # our classifier layout: its loader checks and reads it
                return load_classifier_networks(path, dropout)[0].state_dict()
            tensors = {key: handle.get_tensor(key) for key in keys}
    else:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
        tensors = tensors.get("state_dict", tensors) if isinstance(tensors, dict) else None
        if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
            raise ValueError(f"{path}: not a state dict of tensors")
        if "fc.weight" not in tensors:
            raise ValueError(f"{path}: not a ResNet18 in torchvision's layout (no 'fc.weight'); "
                             "our own classifiers are read from .safetensors")
    state = {key: value.float() for key, value in tensors.items() if not key.startswith("fc.")}
    stem = state.get("conv1.weight")
    if stem is not None and stem.ndim == 4 and stem.shape[1] == 3:
        state["conv1.weight"] = stem.sum(dim=1, keepdim=True)
    model = build_resnet18(dropout)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ValueError(f"{path}: not a ResNet18 state dict: {exc}") from exc
    if unexpected or set(missing) != {"fc.1.weight", "fc.1.bias"}:
        raise ValueError(f"{path}: not a ResNet18 state dict (missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]})")
    return model.state_dict()


def scored_model(run: Run) -> nn.Module:
    """The network that validation scores and checkpoints keep: the weight average when there is one."""
    return run.ema.module if run.ema is not None else run.model


def _save_checkpoint(run: Run, path: Path) -> None:
    state = {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
             "scheduler": run.scheduler.state_dict(), "generator": run.generator.get_state(),
             "torch_rng": torch.get_rng_state(), "epoch": run.epoch, "best_auc": run.best_auc,
             "best_epoch": run.best_epoch, "history": json.dumps(run.history)}
    if run.ema is not None:
        state["ema"] = run.ema.state_dict()
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _load_checkpoint(run: Run, path: Path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.generator.set_state(state["generator"])
    if run.ema is not None:
        run.ema.load_state_dict(state["ema"])
    torch.set_rng_state(state["torch_rng"])
    run.epoch, run.best_auc, run.best_epoch = int(state["epoch"]), float(state["best_auc"]), int(state["best_epoch"])
    run.history = json.loads(state["history"])


def class_weights(labels: np.ndarray) -> torch.Tensor:
    counts = np.bincount(labels, minlength=2).astype(float)
    counts[counts == 0] = 1.0
    return torch.tensor(labels.size / (2.0 * counts), dtype=torch.float32)


def _train_epoch(run: Run, x: torch.Tensor, y: torch.Tensor, settings: ClassifierTrainSettings,
                 weights: torch.Tensor, device: torch.device, amp: torch.dtype | None) -> tuple[float, float]:
    """One pass over (x, y) uint8/int tensors on CPU; returns (mean loss, accuracy at p = 0.5)."""
    run.model.train()
    aug = augment_settings(settings.modality, settings.roi_jitter, settings.scanner_aug, settings.intensity_aug)
    weights = weights.to(device)
    order = torch.randperm(x.shape[0], generator=run.generator)
    total_loss, correct, seen = 0.0, 0, 0
    for start in range(0, len(order), settings.batch_size):
        index = order[start:start + settings.batch_size]
        if index.numel() < 2:      # BatchNorm needs two samples
            continue
        batch = (x[index].float() / 127.5 - 1.0)[:, None]
        batch = augment_rois(batch, aug, run.generator).to(device).contiguous(memory_format=torch.channels_last)
        target = y[index].to(device)
        lam, partner = 1.0, None
        if settings.mixup > 0:
            # lam from the run's generator (numpy draws the Beta), so a resumed run repeats the same mixes
            lam = float(np.random.default_rng(int(torch.randint(2**31, (1,), generator=run.generator)))
                        .beta(settings.mixup, settings.mixup))
            partner = torch.randperm(index.numel(), generator=run.generator).to(device)
            batch = lam * batch + (1.0 - lam) * batch[partner]
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = run.model(batch).float()
        loss = F.cross_entropy(logits, target, weight=weights)
        if partner is not None:
            loss = lam * loss + (1.0 - lam) * F.cross_entropy(logits, target[partner], weight=weights)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.scheduler.step()
        if run.ema is not None:
            run.ema.update_parameters(run.model)
        total_loss += loss.detach().item() * index.numel()
        correct += int((logits.argmax(1) == target).sum())
        seen += index.numel()
    return total_loss / max(seen, 1), correct / max(seen, 1)


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, device: torch.device, tta: bool, batch_size: int = 64,
            amp: torch.dtype | None = None) -> np.ndarray:
    """p(malignant) for uint8 ROIs (n, 128, 128); `tta` averages with the left-right flip. fp32 unless `amp`
    (the per-epoch validation uses the training autocast to save time; reported predictions are fp32)."""
    model.eval()
    out = []
    for start in range(0, x.shape[0], batch_size):
        batch = (x[start:start + batch_size].float() / 127.5 - 1.0)[:, None].to(device)
        views = [batch, torch.flip(batch, dims=(-1,))] if tta else [batch]
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            probs = sum(torch.softmax(model(v).float(), 1)[:, MALIGNANT_CLASS] for v in views) / len(views)
        out.append(probs.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def _val_loss(p: np.ndarray, y: np.ndarray, weights: torch.Tensor) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    logp = np.stack([np.log(1 - p), np.log(p)], 1)
    return float(F.nll_loss(torch.from_numpy(logp), torch.from_numpy(y), weight=weights))


def fit(name: str, x: torch.Tensor, y: torch.Tensor, settings: ClassifierTrainSettings, ckpt_dir: Path, seed: int,
        device: torch.device, amp: torch.dtype | None, resume: bool,
        val: tuple[torch.Tensor, np.ndarray] | None = None, stop_after: int | None = None) -> tuple[Run, dict]:
    """Train one network. With `val`: early stopping on validation AUC, best weights kept in `best.safetensors`.
    Without: train exactly `stop_after` epochs (the final model)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    steps = max(1, math.ceil(x.shape[0] / settings.batch_size))
    run = _new_run(settings, steps, seed, device)
    last, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.safetensors"
    if resume and last.exists():
        _load_checkpoint(run, last)
        log.info("%s: resumed after epoch %d", name, run.epoch)
    weights = class_weights(y.numpy())
    limit = stop_after if stop_after is not None else settings.epochs
    bar = tqdm(total=limit, initial=run.epoch, desc=name, unit="ep", leave=True, mininterval=5)
    while run.epoch < limit:
        if val is not None and run.epoch - run.best_epoch >= settings.patience and run.best_epoch > 0:
            break
        t0 = time.perf_counter()
        loss, acc = _train_epoch(run, x, y, settings, weights, device, amp)
        run.epoch += 1
        entry = {"epoch": run.epoch, "train_loss": loss, "train_accuracy": acc, "lr": run.scheduler.get_last_lr()[0]}
        if val is not None:
            p = predict(scored_model(run), val[0], device, tta=False, amp=amp)
            entry.update(val_loss=_val_loss(p, val[1], weights), val_accuracy=float(np.mean((p >= 0.5) == val[1])),
                         val_auc=M.binary_metrics(val[1], p, 0.5)["roc_auc"])
            if entry["val_auc"] > run.best_auc:
                run.best_auc, run.best_epoch = entry["val_auc"], run.epoch
                save_file({k: v.detach().cpu().contiguous() for k, v in scored_model(run).state_dict().items()},
                          str(best_path))
        entry["seconds"] = time.perf_counter() - t0
        run.history.append(entry)
        _save_checkpoint(run, last)
        bar.update(1)
        bar.set_postfix({k: f"{entry[k]:.3f}" for k in ("train_loss", "val_auc") if k in entry})
        log.info("%s epoch %d: %s", name, run.epoch,
                 ", ".join(f"{k} {v:.4f}" for k, v in entry.items() if k not in ("epoch",)))
    bar.close()
    if val is not None and best_path.exists():
        run.model.load_state_dict(load_file(str(best_path)))
    elif run.ema is not None:
        run.model.load_state_dict(run.ema.module.state_dict())
    return run, {"best_epoch": run.best_epoch, "best_val_auc": run.best_auc, "epochs_run": run.epoch}


# --------------------------------------------------------------------------------------------- the whole job
def _fit_head(features: np.ndarray, labels: np.ndarray, settings: ClassifierTrainSettings) -> FeatureHead:
    """The feature head on training ROIs: one block per input, each with its own C."""
    widths = input_widths(settings.feature_head_inputs)
    strengths = settings.feature_head_c * len(widths) if len(settings.feature_head_c) == 1 else settings.feature_head_c
    return FeatureHead.fit(features, labels, strengths, widths)


def _plan_signature(data: RoiSet, settings: ClassifierTrainSettings, synthetic: RoiSet | None) -> dict:
    # what the CNN folds depend on: the feature head is fitted after them, so adding it resumes the same folds
    ignored = ("device", "threads", "margin_views", "feature_head", "feature_head_c", "feature_head_inputs",
               "cnn_weight")
    keep = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ignored}
    return {"settings": keep, "files": list(data.files), "synthetic": list(synthetic.files) if synthetic else []}


_ADDED_SETTINGS = ("intensity_aug",)   # settings that older checkpoints' signature.json does not name


def _with_defaults(signature: dict) -> dict:
    """A stored plan signature with the settings added since it was written at their defaults (which is what the
    run used), so an older run can still be resumed."""
    defaults = {k: v for k, v in dataclasses.asdict(ClassifierTrainSettings()).items() if k in _ADDED_SETTINGS}
    return {**signature, "settings": {**defaults, **signature.get("settings", {})}}


DataDirs = str | Path | Sequence[str | Path]
LOSO_REPORT = "leave-one-site-out.json"


def _dirs(data_dirs: DataDirs) -> list[Path]:
    return [Path(data_dirs)] if isinstance(data_dirs, (str, Path)) else [Path(d) for d in data_dirs]


def _data_info(dirs: list[Path]) -> dict:
    """What the ROI folders' prepare.json files say (one margin and window for all: ROIs must match the
    pipeline's; folders from before windows were recorded were cut with the default)."""
    infos = [read_prepare_info(d) for d in dirs]

    def shared(key: str, default: object, what: str) -> object:
        values = {info.get(key, default) for info in infos}
        if len(values) > 1:
            raise ValueError(f"the --data folders were cut with different ROI {what} {sorted(map(str, values))}")
        return values.pop()

    return {"margin": shared("margin", None, "margins"), "window": shared("window", DEFAULT_WINDOW, "windows"),
            "lesion_box": shared("lesion_box", DEFAULT_LESION_BOX, "lesion boxes (traced outlines vs annotated boxes)"),
            "roi_size": shared("roi_size", ROI_SIZE, "sizes"),
            "dataset": "+".join(str(info.get("dataset", "unknown")) for info in infos),
            "dir": ", ".join(str(d) for d in dirs)}


def train_model(data_dirs: DataDirs, out_dir: str | Path, settings: ClassifierTrainSettings, *,
                resume: bool = False, synthetic_dir: str | Path | None = None, version: str | None = None,
                name: str | None = None, register: bool = True) -> dict:
    """Cross-validate (folds grouped by patient / identical image, across every site given), pick the threshold,
    train and save the shipped model; returns the metrics document."""
    dirs = _dirs(data_dirs)
    features = roi_features(dirs, settings.device, settings.feature_head_inputs) if settings.feature_head else None
    document, _, _ = _train(load_roi_sets(dirs), _data_info(dirs), Path(out_dir), settings, resume=resume,
                            synthetic_dir=synthetic_dir, version=version, name=name, register=register,
                            features=features)
    return document


def leave_one_site_out(data_dirs: DataDirs, out_dir: str | Path, settings: ClassifierTrainSettings, *,
                       resume: bool = False, synthetic_dir: str | Path | None = None) -> dict:
    """For every site: the whole procedure (grouped CV, threshold, final model) on the other sites, then the site
    left out scored once with that model and threshold — what a hospital that was never seen would get."""
    dirs = _dirs(data_dirs)
    data, info, out = load_roi_sets(dirs), _data_info(dirs), Path(out_dir)
    features = roi_features(dirs, settings.device, settings.feature_head_inputs) if settings.feature_head else None
    sites = sorted(set(data.sites))
    if len(sites) < 2:
        raise ValueError(f"--validate-by site needs ROIs of at least two sites, got {sites}")
    device = select_device(settings.device)
    report = {"sites": sites, "settings": dataclasses.asdict(settings), "held_out": {}}
    for site in sites:
        held = np.array([i for i, s in enumerate(data.sites) if s == site])
        kept = np.array([i for i, s in enumerate(data.sites) if s != site])
        log.info("leave-one-site-out: training without %s (%d ROIs), scoring %s (%d ROIs)", site, len(kept), site,
                 len(held))
        # registered in OUT/manifest.json, so `branet evaluate(-images)` can load it like a shipped model
        document, model, head = _train(data.subset(kept), info, out / f"without-{site}", settings, resume=resume,
                                       synthetic_dir=synthetic_dir, version=f"without-{site}",
                                       features=None if features is None else features[kept])
        p_cnn = predict(model.to(device), torch.from_numpy(data.pixels[held]), device, settings.tta)
        p = p_cnn if head is None else combine(p_cnn, head.predict(features[held]), document["cnn_weight"]["shipped"])
        y = data.labels[held]
        report["held_out"][site] = {
            "trained_on": sorted(set(data.sites) - {site}), "n_train": int(len(kept)),
            "train_cv_roc_auc": document["summary"]["roc_auc"]["mean"], "threshold": document["threshold"],
            **M.binary_metrics(y, p, document["threshold"])}
        if head is not None:   # each part alone, for the record (AUC does not need a threshold)
            report["held_out"][site]["cnn_only_roc_auc"] = M.binary_metrics(y, p_cnn, 0.5)["roc_auc"]
            report["held_out"][site]["feature_head_only_roc_auc"] = M.binary_metrics(
                y, head.predict(features[held]), 0.5)["roc_auc"]
        (out / f"without-{site}" / f"predictions-{site}.csv").write_text(
            "file,truth,p_malignant,p_cnn\n" + "".join(f"{data.files[i]},{int(data.labels[i])},{q:.6f},{c:.6f}\n"
                                                       for i, q, c in zip(held, p, p_cnn)))
    out.mkdir(parents=True, exist_ok=True)
    (out / LOSO_REPORT).write_text(json.dumps(M.json_safe(report), indent=2) + "\n")
    return report


def _train(data: RoiSet, data_info: dict, out: Path, settings: ClassifierTrainSettings, *, resume: bool,
           synthetic_dir: str | Path | None, version: str | None = None, name: str | None = None,
           register: bool = True, features: np.ndarray | None = None) -> tuple[dict, nn.Module, FeatureHead | None]:
    """Grouped CV, threshold, final model (and, with `features` row for row with `data`, the feature head fitted
    on the same training folds; the out-of-fold figures and the threshold are then those of the combination)."""
    started = time.perf_counter()
    ckpt = out / "checkpoints"
    configure_torch(settings.threads)
    device = select_device(settings.device)
    amp = autocast_dtype(device, settings.precision)
    synthetic = load_roi_set(synthetic_dir) if synthetic_dir else None
    if len(set(data.labels.tolist())) < 2:
        raise ValueError(f"{data_info['dir']} needs both benign and malignant ROIs")

    signature = _plan_signature(data, settings, synthetic)
    sig_path = ckpt / "signature.json"
    if resume and sig_path.exists() and _with_defaults(json.loads(sig_path.read_text())) != signature:
        raise ValueError(f"{ckpt} was made with other data or settings; train into a new --out or drop --resume")
    if not resume and ckpt.exists() and any(ckpt.iterdir()):
        raise FileExistsError(f"{ckpt} holds an earlier run: pass --resume to continue it, or remove it")
    ckpt.mkdir(parents=True, exist_ok=True)
    sig_path.write_text(json.dumps(signature) + "\n")

    xs = torch.from_numpy(data.pixels)
    ys = data.labels
    folds = make_folds(data.labels, data.groups if data.grouped else None, settings.folds,
                       settings.seed if settings.split_seed is None else settings.split_seed)
    fold_results = []
    oof = np.full(len(data), np.nan)
    oof_fold = np.full(len(data), -1)
    for k, (train_idx, val_idx) in enumerate(folds, start=1):
        syn_idx = pick_synthetic(synthetic, len(train_idx), settings.synthetic_ratio, settings.seed + k)
        plan = FoldPlan(k, tuple(data.files[i] for i in train_idx),
                        tuple(SYNTHETIC_PREFIX + synthetic.files[i] for i in syn_idx) if synthetic else (),
                        tuple(data.files[i] for i in val_idx))
        assert not set(plan.val) & (set(plan.train) | set(plan.synthetic))
        fold_dir = ckpt / f"fold{k}"
        done = fold_dir / "done.json"
        if resume and done.exists():
            result = json.loads(done.read_text())
        else:
            fold_dir.mkdir(parents=True, exist_ok=True)
            (fold_dir / "plan.json").write_text(json.dumps(dataclasses.asdict(plan), indent=1) + "\n")
            x_train, y_train = with_synthetic(xs[train_idx], torch.from_numpy(ys[train_idx]), synthetic, syn_idx)
            run, info = fit(f"fold {k}/{len(folds)}", x_train, y_train, settings, fold_dir, settings.seed + k,
                            device, amp, resume, val=(xs[val_idx], ys[val_idx]))
            p_val = predict(run.model, xs[val_idx], device, settings.tta)
            result = {**info, "val_files": [data.files[i] for i in val_idx], "p_val": p_val.tolist(),
                      "n_train": int(len(train_idx)), "n_synthetic": int(syn_idx.size), "history": run.history}
            done.write_text(json.dumps(result) + "\n")
        oof[val_idx] = result["p_val"]
        oof_fold[val_idx] = k
        fold_results.append(result)

    parts, cnn_weight = None, None
    if features is not None:
        oof_cnn, oof_head = oof.copy(), np.full(len(data), np.nan)
        for k, (train_idx, val_idx) in enumerate(folds, start=1):
            head = _fit_head(features[train_idx], ys[train_idx], settings)
            head.save(ckpt / f"fold{k}" / HEAD_FILE)   # beside best.safetensors: out-of-fold image evaluation
            oof_head[val_idx] = head.predict(features[val_idx])
        oof, cnn_weight = _cnn_weight(oof_cnn, oof_head, ys, oof_fold, settings.cnn_weight)
        oof = oof.astype(np.float64)
        parts = {name: M.binary_metrics(ys, values, M.youden_threshold(ys, values))
                 for name, values in (("cnn_only", oof_cnn), ("feature_head_only", oof_head))}
    threshold = M.youden_threshold(ys, oof)
    per_fold = []
    for k, result in enumerate(fold_results, start=1):
        inside = oof_fold == k
        cut = M.youden_threshold(ys[~inside], oof[~inside])
        per_fold.append({"fold": k, **M.binary_metrics(ys[inside], oof[inside], cut),
                         "best_epoch": result["best_epoch"], "epochs_run": result["epochs_run"],
                         "n_train": result["n_train"], "n_synthetic": result["n_synthetic"]})

    final_epochs = max(1, int(round(statistics.median(r["best_epoch"] for r in fold_results))))
    out.mkdir(parents=True, exist_ok=True)
    x_all, y_all = with_synthetic(xs, torch.from_numpy(ys), synthetic,
                                  pick_synthetic(synthetic, len(data), settings.synthetic_ratio, settings.seed))
    final_run, _ = fit("final", x_all, y_all, settings, ckpt / "final", settings.seed, device, amp, resume,
                       stop_after=final_epochs)
    final_history = final_run.history
    final_model = final_run.model.cpu().to(memory_format=torch.contiguous_format).eval()
    weights_path = out / WEIGHTS_FILE
    save_classifier(final_model, weights_path, half=True)
    final_head = None
    if features is not None:
        final_head = _fit_head(features, ys, settings)
        final_head.save(out / HEAD_FILE)
    shipped = load_classifier_networks(weights_path, settings.dropout)[0]
    sample = xs[: min(64, len(data))]
    fp16_gap = float(np.max(np.abs(predict(final_model, sample, torch.device("cpu"), settings.tta)
                                   - predict(shipped, sample, torch.device("cpu"), settings.tta))))

    margin = data_info.get("margin")
    version = version or dt.date.today().strftime("%Y.%m.%d")
    name = name or out.name
    document = {
        "name": name, "modality": settings.modality.upper(), "version": version,
        "data": {"dir": data_info["dir"], "dataset": data_info["dataset"], "n": len(data),
                 "n_malignant": int(ys.sum()), "grouped": data.grouped, "n_groups": len(set(data.groups)),
                 "margin": margin, "window": data_info["window"], "lesion_box": data_info["lesion_box"],
                 "roi_size": data_info["roi_size"],
                 "synthetic_dir": str(synthetic_dir) if synthetic_dir else None,
                 "sites": sorted(set(data.sites))},
        "settings": dataclasses.asdict(settings),
        "init_description": backbone_description(settings.init) if settings.init else None,
        "precision": str(amp) if amp else "fp32",
        "device": str(device),
        "threshold": threshold,
        "threshold_method": "Youden J (balanced-accuracy optimum) on pooled out-of-fold predictions",
        "folds": per_fold,
        "summary": M.summarise(per_fold),
        "oof": M.binary_metrics(ys, oof, threshold),
        # with the feature head: each part alone out of fold (each at its own Youden threshold)
        "oof_parts": parts,
        # with the feature head: the CNN's weight in logit space, and how it was chosen
        "cnn_weight": cnn_weight,
        # the one threshold, site by site (out of fold): does it hold at every hospital?
        "oof_by_site": {site: M.binary_metrics(ys[np.array(data.sites) == site], oof[np.array(data.sites) == site],
                                               threshold) for site in sorted(set(data.sites))},
        "final": {"epochs": final_epochs, "history": final_history,
                  "fp16_max_probability_change": fp16_gap,
                  # what a model stopped blindly at `final_epochs` scored on each validation fold (per-epoch
                  # validation: bf16/fp32 as trained, no TTA) - an estimate of the shipped procedure that is
                  # free of per-fold best-epoch selection
                  "fold_val_auc_at_final_epochs": [_auc_at_epoch(r["history"], final_epochs)
                                                   for r in fold_results]},
        # summed epoch times survive --resume; "this_process" is the wall time of the last invocation
        "wall_seconds": {"cross_validation": sum(h["seconds"] for r in fold_results for h in r["history"]),
                         "final": sum(h["seconds"] for h in final_history),
                         "this_process": time.perf_counter() - started},
    }
    _write_outputs(out, document, fold_results, ys, oof, oof_fold)
    _write_oof_predictions(out / "oof_predictions.csv", data.files, ys, oof, oof_fold,
                           None if features is None else (oof_cnn, oof_head))
    extra = {"dropout": settings.dropout, "tta": settings.tta, "architecture": "resnet18-1ch-2cls", "members": 1,
             "cv_roc_auc": round(document["summary"]["roc_auc"]["mean"], 4),
             "cv_balanced_accuracy": round(document["summary"]["balanced_accuracy"]["mean"], 4)}
    if final_head is not None:
        extra["feature_head"] = {"file": f"{out.name}/{HEAD_FILE}", "sha256": file_sha256(out / HEAD_FILE),
                                 "features": "; ".join(HEAD_INPUTS[i] for i in settings.feature_head_inputs),
                                 "inputs": list(settings.feature_head_inputs), "C": list(settings.feature_head_c),
                                 "cnn_weight": cnn_weight["shipped"],
                                 "combine": f"sigmoid({cnn_weight['shipped']} x the CNN's logit + "
                                            f"{round(1 - cnn_weight['shipped'], 2)} x the head's logit)"}
    if register:
        entry = ModelEntry(
            name=name, kind="classifier", modality=settings.modality.upper(), version=version,
            file=f"{out.name}/{WEIGHTS_FILE}", sha256=file_sha256(weights_path), threshold=round(threshold, 6),
            input=classifier_input_spec(margin, settings.margin_views, data_info["window"], data_info["lesion_box"],
                                        data_info["roi_size"]),
            extra=extra)
        register_model(out.parent, entry)
    return document, final_model, final_head


def _write_oof_predictions(path: Path, files: Sequence[str], labels: np.ndarray, p: np.ndarray, fold: np.ndarray,
                           parts: tuple[np.ndarray, np.ndarray] | None) -> None:
    """One row per ROI: truth, out-of-fold p(malignant), its fold; with a feature head also each part's p (p_cnn,
    p_head), so a later analysis needs no refit to take the combination apart."""
    columns = ["file", "truth", "p_malignant", "fold"] + (["p_cnn", "p_head"] if parts else [])
    rows = [[f, str(int(t)), f"{q:.6f}", str(k)] for f, t, q, k in zip(files, labels, p, fold)]
    if parts:
        rows = [row + [f"{c:.6f}", f"{h:.6f}"] for row, c, h in zip(rows, *parts)]
    path.write_text("".join(",".join(row) + "\n" for row in [columns, *rows]))


def _cnn_weight(oof_cnn: np.ndarray, oof_head: np.ndarray, labels: np.ndarray, fold: np.ndarray,
                fixed: float | None) -> tuple[np.ndarray, dict]:
    """The out-of-fold combination and the record of the CNN's weight beside the head: `fixed`, or (None) picked on
    all out-of-fold predictions for the shipped model, while the out-of-fold figures use the weight picked without
    each fold (nested: they stay out of fold)."""
    if fixed is not None:
        return combine(oof_cnn, oof_head, fixed), {"shipped": fixed, "method": "fixed"}
    oof, per_fold = nested_cnn_weight(oof_cnn, oof_head, labels, fold)
    return oof, {"shipped": pick_cnn_weight(oof_cnn, oof_head, labels), "per_fold": per_fold,
                 "method": "ROC AUC of the out-of-fold combination; each fold's own figures with the weight picked "
                           "on the other folds"}


def classifier_input_spec(margin: float, margin_views: Sequence[float] = (), window: str = DEFAULT_WINDOW,
                          lesion_box: str = DEFAULT_LESION_BOX, roi_size: int = ROI_SIZE) -> dict:
    """The manifest's input block for a classifier trained on ROIs cut at `margin` on grey-level `window` around
    boxes of kind `lesion_box`."""
    spec = {"size": roi_size, "channels": 1, "range": [-1.0, 1.0], "margin": margin, "window": window,
            "lesion_box": lesion_box,
            "normalisation": f"extract_roi: square box + margin, {WINDOW_DESCRIPTIONS[window]} -> [0, 1], "
                             "(x - 0.5) / 0.5"}
    if margin_views:
        spec["tta_margins"] = [float(m) for m in margin_views]
    return spec


def _auc_at_epoch(history: list[dict], epoch: int) -> float:
    """Validation AUC at `epoch`, or at the fold's last epoch when it stopped earlier."""
    entries = [h for h in history if h["epoch"] <= epoch]
    return float(entries[-1]["val_auc"]) if entries else float("nan")


def _write_outputs(out: Path, document: dict, fold_results: list[dict], ys: np.ndarray, oof: np.ndarray,
                   oof_fold: np.ndarray) -> None:
    (out / "metrics.json").write_text(json.dumps(M.json_safe(document), indent=2) + "\n")
    plots.plot_history([r["history"] for r in fold_results], out / "history.png")
    curves = [("pooled out-of-fold", ys, oof)] + [
        (f"fold {k}", ys[oof_fold == k], oof[oof_fold == k]) for k in range(1, len(fold_results) + 1)]
    plots.plot_roc(curves, out / "roc.png", threshold=document["threshold"])
    plots.plot_confusion(document["oof"]["confusion_matrix"], out / "confusion_matrix.png",
                         title=f"Out-of-fold, threshold {document['threshold']:.3f}")
    loso = out / LOSO_REPORT
    write_model_card(out / "MODEL_CARD.md", document, json.loads(loso.read_text()) if loso.is_file() else None)
