"""Export EMA generator weights with re-estimated batch-norm statistics from training checkpoints.

    python research/sngan/refresh_ema.py RUN/checkpoints OUT_DIR EPOCH...

The US experiment run started before the trainer refreshed the EMA generator's batch-norm statistics itself
(`refresh_batch_norm_stats`, now done at every checkpoint). This writes, per epoch, exactly what the current trainer
saves as checkpoints/epoch_N.safetensors: the EMA weights, statistics re-estimated with seed settings.seed+1000+N.
"""
import sys
from pathlib import Path

import torch

from branet_pacs.sngan.networks import Generator, NetworkConfig
from branet_pacs.sngan.trainer import TrainSettings, load_checkpoint, refresh_batch_norm_stats, save_generator_weights


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    src, out = Path(argv[0]), Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for epoch in map(int, argv[2:]):
        data = load_checkpoint(src / f"epoch_{epoch:04d}.pt")
        network, settings = NetworkConfig.from_dict(data["network"]), TrainSettings(**data["settings"])
        generator = Generator(network)
        generator.load_state_dict(data["generator_ema"])
        refresh_batch_norm_stats(generator, seed=settings.seed + 1000 + epoch)
        save_generator_weights(out / f"epoch_{epoch:04d}.safetensors", generator, network, settings, epoch, ema=True)
        print("wrote", out / f"epoch_{epoch:04d}.safetensors")


if __name__ == "__main__":
    main(sys.argv[1:])
