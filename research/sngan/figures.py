"""Figures for docs/sngan-experiment.md: real vs synthetic ROIs, samples by epoch, training curves.

    python research/sngan/figures.py /tmp/sngan-exp /tmp/sngan-split docs/sngan
"""
import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from branet_pacs.sngan.generate import load_generator, sample  # noqa: E402


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    exp, split, out = Path(argv[0]), Path(argv[1]), Path(argv[2])
    out.mkdir(parents=True, exist_ok=True)


    def strip(images: list[np.ndarray], pad: int = 2) -> np.ndarray:
        size = images[0].shape[0]
        row = np.full((size + 2 * pad, len(images) * (size + pad) + pad), 255, np.uint8)
        for i, im in enumerate(images):
            row[pad:pad + size, pad + i * (size + pad):pad + i * (size + pad) + size] = im
        return row


    def real(label: str, n: int) -> list[np.ndarray]:
        files = sorted((split / "train" / label).glob("*.png"))
        return [np.asarray(Image.open(files[i])) for i in np.linspace(0, len(files) - 1, n).round().astype(int)]


    def fake(path: Path, label: str, n: int, weights: str = "auto") -> list[np.ndarray]:
        return list(sample(load_generator(path, weights), n, label, seed=5))


    ema = exp / "us-run" / "ema-refreshed"
    final = ema / "epoch_0037.safetensors"
    rows = [("real benign (BUSI)", real("benign", 8)), ("synthetic benign", fake(final, "benign", 8)),
            ("real malignant (BUSI)", real("malignant", 8)), ("synthetic malignant", fake(final, "malignant", 8))]
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.45 * len(rows)))
    for ax, (title, images) in zip(axes, rows):
        ax.imshow(strip(images), cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=9, loc="left")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "real_vs_synthetic.png", dpi=100)
    plt.close(fig)

    epochs = [1, 5, 13, 21, 29, 37]
    rows = [(f"epoch {e} EMA", fake(ema / f"epoch_{e:04d}.safetensors", "benign", 4)
             + fake(ema / f"epoch_{e:04d}.safetensors", "malignant", 4)) for e in epochs]
    rows.append(("epoch 37 raw G", fake(exp / "us-run" / "checkpoints" / "epoch_0037.pt", "benign", 4, "raw")
                 + fake(exp / "us-run" / "checkpoints" / "epoch_0037.pt", "malignant", 4, "raw")))
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.45 * len(rows)))
    for ax, (title, images) in zip(axes, rows):
        ax.imshow(strip(images), cmap="gray", vmin=0, vmax=255)
        ax.set_title(title + "  (4 benign | 4 malignant)", fontsize=9, loc="left")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "samples_by_epoch.png", dpi=100)
    plt.close(fig)

    for name in ("real_vs_synthetic.png", "samples_by_epoch.png"):  # grayscale content: 8-bit PNG is a third the size
        Image.open(out / name).convert("L").save(out / name, optimize=True)
    for name in ("losses.png", "accuracy.png"):
        shutil.copy2(exp / "us-run" / name, out / f"training_{name}")
    print("wrote", sorted(p.name for p in out.glob("*.png")))


if __name__ == "__main__":
    main(sys.argv[1:])
