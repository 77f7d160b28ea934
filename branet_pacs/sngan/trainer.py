"""SNGAN training with per-epoch checkpoints (weights, optimizers, RNG state), exact resume, EMA, grids and plots.

Run layout (RUN = --out):
  RUN/run.json                          settings and architecture of the run
  RUN/checkpoints/epoch_NNNN.pt         full training state (torch.save of tensors/plain values; weights_only loads)
  RUN/checkpoints/epoch_NNNN.safetensors generator weights of that epoch (EMA weights when EMA is on)
  RUN/generator.safetensors             the latest generator weights (what `branet sngan generate` takes)
  RUN/samples/epoch_NNNN.png            fixed-latent sample grid, one row block per class
  RUN/history.csv, RUN/losses.png, RUN/accuracy.png

All randomness comes from three seeded torch.Generator objects (data order + flips, latents, and torch's global
generator) whose states are checkpointed, so a resumed run continues bit-for-bit like an uninterrupted one on the
same device and thread count.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from branet_pacs.imaging.roi import roi_to_uint8
from branet_pacs.sngan.data import RoiSet
from branet_pacs.sngan.losses import discriminator_hinge_loss, generator_hinge_loss, real_fake_accuracy
from branet_pacs.sngan.networks import CLASSES, Discriminator, Generator, NetworkConfig, sample_latent

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "branet-sngan-checkpoint/1"
WEIGHTS_FORMAT = "branet-sngan-generator/1"
_EPOCH_FILE = re.compile(r"^epoch_(\d{4,})\.pt$")


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings. `for_modality` gives the BraNet paper's per-modality values."""

    modality: str = "us"
    epochs: int = 100
    batch_size: int = 32
    lr: float = 1.5e-4
    beta1: float = 0.3
    beta2: float = 0.75
    n_dis: int = 1                  # discriminator steps per generator step
    ema_decay: float = 0.0          # 0 = no EMA generator; e.g. 0.999
    hflip: bool = True              # random horizontal flips of the real ROIs
    seed: int = 0
    samples_per_class: int = 8      # columns of the per-epoch grid
    precision: str = "fp32"         # fp32 | bf16 (autocast of the forward passes; fast on AMX CPUs and GPUs)

    @staticmethod
    def for_modality(modality: str, **overrides: Any) -> "TrainSettings":
        """Paper defaults: US lr 1.5e-4, betas (0.3, 0.75), batch 32; MG lr 2e-4, betas (0.3, 0.999), batch 64."""
        modality = modality.lower()
        if modality == "us":
            base = TrainSettings(modality="us", lr=1.5e-4, beta1=0.3, beta2=0.75, batch_size=32)
        elif modality == "mg":
            base = TrainSettings(modality="mg", lr=2e-4, beta1=0.3, beta2=0.999, batch_size=64)
        else:
            raise ValueError(f"modality must be 'us' or 'mg', got {modality!r}")
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.n_dis < 1 or not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"invalid training settings: {self}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")


@dataclass
class TrainState:
    """Everything that changes during training (what a checkpoint holds besides the settings)."""

    generator: Generator
    discriminator: Discriminator
    opt_g: torch.optim.Adam
    opt_d: torch.optim.Adam
    data_rng: torch.Generator
    latent_rng: torch.Generator
    fixed_z: torch.Tensor
    fixed_y: torch.Tensor
    ema: Generator | None = None
    epoch: int = 0
    step: int = 0                   # discriminator steps done
    elapsed_s: float = 0.0          # training wall time summed over all invocations
    history: list[dict[str, float]] = field(default_factory=list)
    iterations: list[list[float]] = field(default_factory=list)  # per D step: d_loss, g_loss, real_acc, fake_acc


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    epochs_done: int
    steps_done: int
    stopped_early: bool
    last_checkpoint: Path | None
    wall_s: float


def _new_state(network: NetworkConfig, settings: TrainSettings, device: torch.device) -> TrainState:
    torch.manual_seed(settings.seed)
    generator = Generator(network).to(device)
    discriminator = Discriminator(network).to(device)
    betas = (settings.beta1, settings.beta2)
    opt_g = torch.optim.Adam(generator.parameters(), lr=settings.lr, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=settings.lr, betas=betas)
    data_rng = torch.Generator().manual_seed(settings.seed + 1)
    latent_rng = torch.Generator().manual_seed(settings.seed + 2)
    fixed_rng = torch.Generator().manual_seed(settings.seed + 3)
    n = settings.samples_per_class
    fixed_z = sample_latent(n * network.num_classes, network.latent_dim, fixed_rng)
    fixed_y = torch.arange(network.num_classes).repeat_interleave(n)
    ema = copy.deepcopy(generator).eval() if settings.ema_decay > 0 else None
    if ema is not None:
        ema.requires_grad_(False)
    return TrainState(generator, discriminator, opt_g, opt_d, data_rng, latent_rng, fixed_z, fixed_y, ema)


def checkpoint_dict(state: TrainState, network: NetworkConfig, settings: TrainSettings) -> dict[str, Any]:
    """The checkpoint as plain tensors/containers (loadable with torch.load(weights_only=True))."""
    return {
        "format": CHECKPOINT_FORMAT,
        "network": network.to_dict(),
        "settings": asdict(settings),
        "classes": list(CLASSES[:network.num_classes]),
        "epoch": state.epoch,
        "step": state.step,
        "elapsed_s": state.elapsed_s,
        "generator": state.generator.state_dict(),
        "discriminator": state.discriminator.state_dict(),
        "generator_ema": state.ema.state_dict() if state.ema is not None else {},
        "optimizer_g": state.opt_g.state_dict(),
        "optimizer_d": state.opt_d.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "data": state.data_rng.get_state(),
                "latent": state.latent_rng.get_state()},
        "fixed_z": state.fixed_z,
        "fixed_y": state.fixed_y,
        "history": state.history,
        "iterations": torch.tensor(state.iterations, dtype=torch.float64).reshape(-1, 4),
    }


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint without unpickling arbitrary objects."""
    data = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a BraNet SNGAN checkpoint ({CHECKPOINT_FORMAT})")
    return data


def _restore_state(data: dict[str, Any], device: torch.device) -> tuple[TrainState, NetworkConfig, TrainSettings]:
    network = NetworkConfig.from_dict(data["network"])
    settings = TrainSettings(**data["settings"])
    state = _new_state(network, settings, device)
    state.generator.load_state_dict(data["generator"])
    state.discriminator.load_state_dict(data["discriminator"])
    if state.ema is not None:
        state.ema.load_state_dict(data["generator_ema"])
    state.opt_g.load_state_dict(data["optimizer_g"])
    state.opt_d.load_state_dict(data["optimizer_d"])
    torch.set_rng_state(data["rng"]["torch"])
    state.data_rng.set_state(data["rng"]["data"])
    state.latent_rng.set_state(data["rng"]["latent"])
    state.fixed_z, state.fixed_y = data["fixed_z"], data["fixed_y"]
    state.epoch, state.step, state.elapsed_s = int(data["epoch"]), int(data["step"]), float(data["elapsed_s"])
    state.history = [dict(row) for row in data["history"]]
    state.iterations = data["iterations"].tolist()
    return state, network, settings


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _EPOCH_FILE.match(p.name)))
    return found[-1][1] if found else None


def _ema_update(ema: Generator, model: Generator, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1.0 - decay)
        for e, b in zip(ema.buffers(), model.buffers()):
            e.copy_(b)


def refresh_batch_norm_stats(generator: Generator, seed: int, batches: int = 8, batch_size: int = 32) -> None:
    """Re-estimate the generator's batch-norm running statistics from its own outputs ("standing statistics").

    An EMA generator's weights are an average, but the running statistics it inherits belong to the raw generator;
    sampling it in eval mode with those statistics gives washed-out images. Cumulative averages over `batches`
    batches of random latents (classes in equal shares) fix that. Uses its own seeded RNG: training is unaffected.
    """
    config = generator.config
    rng = torch.Generator().manual_seed(seed)
    device = next(generator.parameters()).device
    norms = [m for m in generator.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    was_training = generator.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    generator.train()
    with torch.no_grad():
        for _ in range(batches):
            z = sample_latent(batch_size, config.latent_dim, rng).to(device)
            y = (torch.arange(batch_size) % config.num_classes).to(device)
            generator(z, y)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    generator.train(was_training)


def _train_epoch(state: TrainState, data: RoiSet, settings: TrainSettings, device: torch.device,
                 progress: bool) -> None:
    n = len(data)
    batch = min(settings.batch_size, n)
    order = torch.randperm(n, generator=state.data_rng)
    batches = [order[i:i + batch] for i in range(0, n - batch + 1, batch)]  # drop the ragged last batch
    latent_dim = state.generator.config.latent_dim
    state.generator.train()
    state.discriminator.train()
    bar = tqdm(batches, desc=f"epoch {state.epoch + 1}", leave=False, disable=not progress)
    bf16 = settings.precision == "bf16"

    def autocast() -> torch.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    g_loss_value = float("nan")
    for index in bar:
        x = data.images[index]
        y = data.labels[index]
        if settings.hflip:
            flip = torch.rand(x.shape[0], generator=state.data_rng) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        x, y = x.to(device), y.to(device)
        z = sample_latent(x.shape[0], latent_dim, state.latent_rng).to(device)
        with torch.no_grad(), autocast():
            fake = state.generator(z, y)
        with autocast():
            real_scores = state.discriminator(x, y).float()
            fake_scores = state.discriminator(fake, y).float()
        d_loss = discriminator_hinge_loss(real_scores, fake_scores)
        state.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        state.opt_d.step()
        real_acc, fake_acc = real_fake_accuracy(real_scores.detach(), fake_scores.detach())
        state.step += 1
        d_value = float(d_loss.detach())
        if not math.isfinite(d_value):
            raise FloatingPointError(f"non-finite discriminator loss at step {state.step}: {d_value}")
        if state.step % settings.n_dis == 0:
            z = sample_latent(x.shape[0], latent_dim, state.latent_rng).to(device)
            with autocast():
                g_loss = generator_hinge_loss(state.discriminator(state.generator(z, y), y).float())
            state.opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            state.opt_g.step()
            g_loss_value = float(g_loss.detach())
            if not math.isfinite(g_loss_value):
                raise FloatingPointError(f"non-finite generator loss at step {state.step}: {g_loss_value}")
            if state.ema is not None:
                _ema_update(state.ema, state.generator, settings.ema_decay)
        state.iterations.append([d_value, g_loss_value, real_acc, fake_acc])
        bar.set_postfix(d=f"{d_value:.3f}", g=f"{g_loss_value:.3f}", real=f"{real_acc:.2f}", fake=f"{fake_acc:.2f}")
    state.epoch += 1


def sample_grid(generator: Generator, z: torch.Tensor, y: torch.Tensor, columns: int) -> np.ndarray:
    """uint8 grid image of G(z, y) in eval mode: one row per `columns` samples (rows grouped by class)."""
    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    with torch.no_grad():
        images = generator(z.to(device), y.to(device)).cpu().numpy()[:, 0]
    generator.train(was_training)
    size, pad = images.shape[-1], 2
    rows = math.ceil(len(images) / columns)
    grid = np.full((rows * (size + pad) + pad, columns * (size + pad) + pad), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[pad + r * (size + pad):pad + r * (size + pad) + size,
             pad + c * (size + pad):pad + c * (size + pad) + size] = roi_to_uint8(image)
    return grid


def save_generator_weights(path: Path, generator: Generator, network: NetworkConfig, settings: TrainSettings,
                           epoch: int, ema: bool) -> None:
    metadata = {"format": WEIGHTS_FORMAT, "network": json.dumps(network.to_dict()),
                "classes": json.dumps(list(CLASSES[:network.num_classes])), "modality": settings.modality,
                "epoch": str(epoch), "ema": str(ema).lower()}
    tensors = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def _write_history(run_dir: Path, state: TrainState) -> None:
    fields = ["epoch", "step", "d_loss", "g_loss", "d_real_acc", "d_fake_acc", "epoch_s", "elapsed_s"]
    with open(run_dir / "history.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in state.history:
            writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in fields})
    _plot(run_dir, state)


def _plot(run_dir: Path, state: TrainState) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = np.asarray(state.iterations, dtype=np.float64).reshape(-1, 4)
    steps = np.arange(1, len(its) + 1)
    epochs = [row["epoch"] for row in state.history]
    ends = [row["step"] for row in state.history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, its[:, 0], color="tab:blue", alpha=0.25, lw=0.8)
    ax.plot(steps, its[:, 1], color="tab:orange", alpha=0.25, lw=0.8)
    ax.plot(ends, [r["d_loss"] for r in state.history], "o-", color="tab:blue", label="D hinge loss (epoch mean)")
    ax.plot(ends, [r["g_loss"] for r in state.history], "o-", color="tab:orange", label="G loss (epoch mean)")
    ax.set_xlabel("discriminator step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "losses.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(epochs, [r["d_real_acc"] for r in state.history], "o-", label="D accuracy on real (score > 0)")
    ax.plot(epochs, [r["d_fake_acc"] for r in state.history], "o-", label="D accuracy on fake (score < 0)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "accuracy.png", dpi=100)
    plt.close(fig)


def _save_epoch(run_dir: Path, state: TrainState, network: NetworkConfig, settings: TrainSettings) -> Path:
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"epoch_{state.epoch:04d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    if state.ema is not None:
        refresh_batch_norm_stats(state.ema, seed=settings.seed + 1000 + state.epoch)
    best = state.ema if state.ema is not None else state.generator
    weights = ckpt_dir / f"epoch_{state.epoch:04d}.safetensors"
    save_generator_weights(weights, best, network, settings, state.epoch, state.ema is not None)
    save_generator_weights(run_dir / "generator.safetensors", best, network, settings, state.epoch,
                           state.ema is not None)
    torch.save(checkpoint_dict(state, network, settings), tmp)  # after the EMA refresh: resume sees the same state
    tmp.replace(path)
    samples = run_dir / "samples"
    samples.mkdir(exist_ok=True)
    grid = sample_grid(best, state.fixed_z, state.fixed_y, settings.samples_per_class)
    Image.fromarray(grid).save(samples / f"epoch_{state.epoch:04d}.png")
    _write_history(run_dir, state)
    return path


def train(data: RoiSet, run_dir: str | Path, network: NetworkConfig | None = None,
          settings: TrainSettings | None = None, resume: bool = False, device: torch.device | str = "cpu",
          max_minutes: float | None = None, progress: bool = False, epochs: int | None = None) -> TrainResult:
    """Train (or, with resume, continue) an SNGAN run up to `epochs` (default `settings.epochs`) epochs in total.

    With `resume`, the latest RUN/checkpoints/epoch_*.pt is restored (architecture, settings, weights, optimizers,
    RNG); only the epoch count may then differ from the stored settings (to extend a run). `max_minutes` stops the run at
    an epoch boundary before an epoch that would not fit in the remaining wall time (estimated from the last one).
    """
    run_dir = Path(run_dir)
    device = torch.device(device)
    started = time.monotonic()
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if checkpoint is not None:
        state, network, stored = _restore_state(load_checkpoint(checkpoint), device)
        target_epochs = epochs if epochs is not None else (settings.epochs if settings is not None else stored.epochs)
        if settings is not None and replace(settings, epochs=stored.epochs) != stored:
            log.warning("resuming %s with its stored settings; other settings given are ignored", run_dir)
        settings = replace(stored, epochs=target_epochs)
        log.info("resumed %s at epoch %d (step %d)", checkpoint, state.epoch, state.step)
    else:
        if resume:
            log.info("no checkpoint in %s: starting a new run", run_dir)
        elif latest_checkpoint(run_dir) is not None:
            raise FileExistsError(f"{run_dir} already holds checkpoints: pass resume to continue it")
        network = network or NetworkConfig()
        settings = settings or TrainSettings()
        if epochs is not None:
            settings = replace(settings, epochs=epochs)
        state = _new_state(network, settings, device)
    if data.images.shape[-1] != network.image_size:
        raise ValueError(f"ROIs are {data.images.shape[-1]} px but the network makes {network.image_size} px")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps(
        {"network": network.to_dict(), "settings": asdict(settings), "classes": list(CLASSES),
         "data": {"n": len(data), "class_counts": data.class_counts()}}, indent=2))
    last = checkpoint
    stopped_early = False
    last_epoch_s = 0.0
    while state.epoch < settings.epochs:
        spent = time.monotonic() - started
        if max_minutes is not None and spent + last_epoch_s > max_minutes * 60.0:
            stopped_early = True
            log.info("wall budget of %.1f min reached after epoch %d", max_minutes, state.epoch)
            break
        t0 = time.monotonic()
        first = len(state.iterations)
        _train_epoch(state, data, settings, device, progress)
        last_epoch_s = time.monotonic() - t0
        state.elapsed_s += last_epoch_s
        its = np.asarray(state.iterations[first:], dtype=np.float64).reshape(-1, 4)
        means = np.nanmean(its, axis=0) if len(its) else np.full(4, np.nan)
        state.history.append({"epoch": state.epoch, "step": state.step, "d_loss": float(means[0]),
                              "g_loss": float(means[1]), "d_real_acc": float(means[2]),
                              "d_fake_acc": float(means[3]), "epoch_s": last_epoch_s, "elapsed_s": state.elapsed_s})
        last = _save_epoch(run_dir, state, network, settings)
        log.info("epoch %d/%d step %d: D %.4f G %.4f acc real %.2f fake %.2f (%.1f s)", state.epoch,
                 settings.epochs, state.step, means[0], means[1], means[2], means[3], last_epoch_s)
    return TrainResult(run_dir, state.epoch, state.step, stopped_early, last, time.monotonic() - started)
