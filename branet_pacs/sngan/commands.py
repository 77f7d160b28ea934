"""`branet sngan train | generate | score`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("sngan", help="train a class-conditional SNGAN, generate synthetic ROIs, score them",
                                   description="Synthetic ROIs with a class-conditional SNGAN (research use only).")
    sub = parser.add_subparsers(dest="sngan_command", required=True, metavar="SNGAN_COMMAND")

    train = sub.add_parser("train", help="train (or resume) an SNGAN on an ROI folder (DIR/benign, DIR/malignant)")
    train.add_argument("--data", required=True, help="ROI folder: DIR/benign/*.png and DIR/malignant/*.png")
    train.add_argument("--modality", required=True, choices=("us", "mg"), help="selects the paper's hyper-parameters")
    train.add_argument("--out", required=True, help="run folder (checkpoints, samples, plots)")
    train.add_argument("--epochs", type=int, default=100, help="total epochs (a resumed run continues up to it)")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    train.add_argument("--batch-size", type=int, default=None, help="default: 32 (us) / 64 (mg)")
    train.add_argument("--lr", type=float, default=None, help="default: 1.5e-4 (us) / 2e-4 (mg)")
    train.add_argument("--beta1", type=float, default=None, help="default: 0.3")
    train.add_argument("--beta2", type=float, default=None, help="default: 0.75 (us) / 0.999 (mg)")
    train.add_argument("--n-dis", type=int, default=None, help="discriminator steps per generator step (default 1)")
    train.add_argument("--ema", type=float, default=None, metavar="DECAY",
                       help="keep an EMA generator with this decay (e.g. 0.999); default off")
    train.add_argument("--no-flip", action="store_true", help="no random horizontal flips of real ROIs")
    train.add_argument("--width", type=int, default=None, help="network width (channels at full resolution); default 16")
    train.add_argument("--image-size", type=int, default=128, help="ROI size (power of two; default 128)")
    train.add_argument("--seed", type=int, default=None, help="default 0")
    train.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                       help="fp32 (default) or bf16 autocast (about 1.7x faster on CPUs with AMX)")
    train.add_argument("--max-minutes", type=float, default=None,
                       help="stop at an epoch boundary before exceeding this wall time")
    train.add_argument("--device", default=None, help="auto | cpu | cuda (default: config)")
    train.add_argument("--threads", type=int, default=None, help="torch threads (default: config; 0 = all cores)")
    train.add_argument("--config", default=None, help="branet TOML config")
    train.set_defaults(func=_train)

    gen = sub.add_parser("generate", help="write synthetic ROIs of one class as PNG or synthetic DICOM SC")
    gen.add_argument("--checkpoint", required=True,
                     help="generator .safetensors, training checkpoint .pt, or a run folder")
    gen.add_argument("--n", type=int, required=True, help="number of ROIs")
    gen.add_argument("--label", required=True, choices=("benign", "malignant"))
    gen.add_argument("--out", required=True, help="output folder")
    gen.add_argument("--format", default="png", choices=("png", "dicom"))
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--weights", default="auto", choices=("auto", "ema", "raw"),
                     help="from a .pt checkpoint: EMA or raw generator weights (auto: EMA when kept)")
    gen.add_argument("--threads", type=int, default=None)
    gen.add_argument("--config", default=None)
    gen.set_defaults(func=_generate)

    score = sub.add_parser("score", help="FID and KID between a real and a synthetic ROI folder (clean-fid method)")
    score.add_argument("--real", required=True, help="folder of real ROIs (class sub-folders or flat)")
    score.add_argument("--fake", required=True, help="folder of synthetic ROIs (class sub-folders or flat)")
    score.add_argument("--features", default="litemedsam",
                       help="litemedsam (default) | classifier:MODEL | inception:FILE")
    score.add_argument("--kid-subsets", type=int, default=100)
    score.add_argument("--kid-subset-size", type=int, default=1000)
    score.add_argument("--max-images", type=int, default=None,
                       help="use at most this many images per set (an evenly spread, deterministic subset)")
    score.add_argument("--cache", default=None, help="folder for cached feature arrays (.npz)")
    score.add_argument("--json", default=None, help="also write the scores to this JSON file")
    score.add_argument("--batch-size", type=int, default=16)
    score.add_argument("--seed", type=int, default=0, help="seed of the KID subset draws")
    score.add_argument("--device", default=None)
    score.add_argument("--threads", type=int, default=None)
    score.add_argument("--config", default=None)
    score.set_defaults(func=_score)


def _runtime(args: argparse.Namespace):
    """Configure torch threads and pick the device, from CLI flags over the config file."""
    from branet_pacs.config import load_config
    from branet_pacs.models.runtime import configure_torch, select_device

    config = load_config(getattr(args, "config", None))
    threads = args.threads if getattr(args, "threads", None) is not None else config.threads
    configure_torch(threads)
    return select_device(getattr(args, "device", None) or config.device)


def _train(args: argparse.Namespace) -> int:
    from branet_pacs.sngan.data import load_roi_set
    from branet_pacs.sngan.networks import NetworkConfig
    from branet_pacs.sngan.trainer import TrainSettings, latest_checkpoint, load_checkpoint, train

    device = _runtime(args)
    settings = TrainSettings.for_modality(
        args.modality, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, beta1=args.beta1,
        beta2=args.beta2, n_dis=args.n_dis, ema_decay=args.ema, hflip=False if args.no_flip else None, seed=args.seed,
        precision=args.precision)
    checkpoint = latest_checkpoint(args.out) if args.resume else None
    if checkpoint is not None:
        # a resumed run keeps its stored architecture and settings; only --epochs extends it
        stored = load_checkpoint(checkpoint)
        network, settings = NetworkConfig.from_dict(stored["network"]), TrainSettings(**stored["settings"])
        if args.modality != settings.modality:
            raise SystemExit(f"{args.out} is a {settings.modality} run, not {args.modality}")
        run_network, run_settings = None, None
    else:
        width = args.width or NetworkConfig().g_width
        network = NetworkConfig(image_size=args.image_size, g_width=width, d_width=width)
        run_network, run_settings = network, settings
    data = load_roi_set(args.data, network.image_size)
    log.info("SNGAN %s: %d ROIs %s, device %s", settings.modality, len(data), data.class_counts(), device)
    result = train(data, args.out, run_network, run_settings, resume=args.resume, device=device,
                   max_minutes=args.max_minutes, progress=sys.stderr.isatty(), epochs=args.epochs)
    print(json.dumps({"run": str(result.run_dir), "epochs": result.epochs_done, "steps": result.steps_done,
                      "stopped_early": result.stopped_early, "checkpoint": str(result.last_checkpoint),
                      "wall_s": round(result.wall_s, 1)}))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from branet_pacs.sngan.generate import generate

    _runtime(args)
    files = generate(args.checkpoint, args.n, args.label, args.out, args.format, args.seed, args.weights)
    print(f"wrote {len(files)} {args.format} files to {args.out}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from branet_pacs.sngan.metrics import score_folders

    device = _runtime(args)
    result = score_folders(args.real, args.fake, args.features, device=device, kid_subsets=args.kid_subsets,
                           kid_subset_size=args.kid_subset_size, max_images=args.max_images,
                           cache_dir=args.cache, batch_size=args.batch_size, seed=args.seed)
    print(result.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2))
    return 0
