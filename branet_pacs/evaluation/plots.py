"""PNG figures for training and evaluation reports (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_history(histories: Sequence[Sequence[dict]], path: Path, labels: Sequence[str] | None = None) -> Path:
    """Loss and accuracy per epoch (train dashed, validation solid), one colour per fold."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for index, history in enumerate(histories):
        if not history:
            continue
        label = labels[index] if labels else f"fold {index + 1}"
        epochs = [h["epoch"] for h in history]
        colour = f"C{index % 10}"
        ax_loss.plot(epochs, [h["train_loss"] for h in history], "--", color=colour, alpha=0.7)
        ax_acc.plot(epochs, [h["train_accuracy"] for h in history], "--", color=colour, alpha=0.7)
        if "val_loss" in history[0]:
            ax_loss.plot(epochs, [h["val_loss"] for h in history], "-", color=colour, label=label)
            ax_acc.plot(epochs, [h["val_accuracy"] for h in history], "-", color=colour, label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss (dashed: train, solid: validation)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy at p=0.5", ylim=(0, 1))
    ax_acc.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_roc(curves: Sequence[tuple[str, Sequence[int], Sequence[float]]], path: Path,
             threshold: float | None = None) -> Path:
    """ROC curves; `curves` = (label, truth, p_malignant). The threshold's point is marked on the first curve."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for index, (label, y, p) in enumerate(curves):
        if len(set(np.asarray(y).tolist())) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, lw=2.5 if index == 0 else 1, alpha=1.0 if index == 0 else 0.6, label=label)
        if index == 0 and threshold is not None:
            y, p = np.asarray(y), np.asarray(p)
            ax.plot(np.mean(p[y == 0] >= threshold), np.mean(p[y == 1] >= threshold), "ko",
                    label=f"threshold {threshold:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (malignant positive)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_confusion(matrix: Sequence[Sequence[int]], path: Path, title: str = "Confusion matrix") -> Path:
    """2x2 confusion matrix [[TN, FP], [FN, TP]] with counts and row percentages."""
    m = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.imshow(m, cmap="Blues")
    names = ("benign", "malignant")
    for r in range(2):
        for c in range(2):
            share = m[r, c] / m[r].sum() if m[r].sum() else 0.0
            ax.text(c, r, f"{int(m[r, c])}\n{share:.1%}", ha="center", va="center",
                    color="white" if m[r, c] > m.max() / 2 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=names, yticklabels=names, xlabel="predicted", ylabel="truth",
           title=title)
    return _save(fig, path)


def plot_dice(dice_box: Sequence[float], dice_auto: Sequence[float], path: Path) -> Path:
    """Histograms of per-lesion Dice for the box-prompt and automatic paths."""
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 21)
    ax.hist(dice_box, bins=bins, alpha=0.6, label=f"box prompt (mean {np.mean(dice_box):.3f})")
    ax.hist(dice_auto, bins=bins, alpha=0.6, label=f"automatic (mean {np.mean(dice_auto):.3f})")
    ax.set(xlabel="Dice", ylabel="lesions", title="Segmentation Dice per lesion")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_detector_history(histories: Sequence[Sequence[dict]], path: Path) -> Path:
    """Lesion-detector training: loss per epoch (dashed: held-out fold) and held-out heatmap Dice, per fold."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for fold, history in enumerate(histories):
        epochs = [h["epoch"] for h in history]
        axes[0].plot(epochs, [h["train_loss"] for h in history], color=f"C{fold}", label=f"fold {fold} train")
        val = [h for h in history if "val_loss" in h]
        if val:
            axes[0].plot([h["epoch"] for h in val], [h["val_loss"] for h in val], color=f"C{fold}", ls="--",
                         marker=".")
            axes[1].plot([h["epoch"] for h in val], [h["val_dice"] for h in val], color=f"C{fold}", marker=".",
                         label=f"fold {fold}")
    axes[0].set(xlabel="epoch", ylabel="BCE + Dice loss", title="loss (dashed: held-out fold)")
    axes[1].set(xlabel="epoch", ylabel="pixel Dice @0.5", title="held-out heatmap Dice")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
