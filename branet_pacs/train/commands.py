"""CLI doors of training: `branet train` (the classifier) and `branet train-detector` (the lesion detector).

Heavy modules (torch) are imported inside each command so `branet --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from branet_pacs.train import detector

    _register_train(subparsers)
    detector.register(subparsers)
    _register_pretrain(subparsers)


# --------------------------------------------------------------------------------------------- train
def _margins(text: str) -> tuple[float, ...]:
    try:
        margins = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"margins must be comma-separated numbers, got {text!r}") from None
    if not margins or any(not 0.0 <= m <= 2.0 for m in margins):
        raise argparse.ArgumentTypeError(f"margins must be between 0 and 2, got {text!r}")
    return margins


def _cnn_weight(text: str) -> float | None:
    """--cnn-weight: a number in [0, 1], or 'auto' (None: picked on the out-of-fold predictions)."""
    if text == "auto":
        return None
    try:
        weight = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--cnn-weight must be a number in [0, 1] or 'auto', got {text!r}") from None
    if not 0.0 <= weight <= 1.0:
        raise argparse.ArgumentTypeError(f"--cnn-weight must be in [0, 1], got {text!r}")
    return weight


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="k-fold cross-validated ResNet18 training; writes models/NAME")
    p.add_argument("--data", type=Path, required=True, action="append",
                   help="ImageFolder ROI dataset (from `branet prepare`); repeat it for several sites")
    p.add_argument("--validate-by", choices=("group", "site"), default="group",
                   help="group (default): grouped k-fold CV over all ROIs, then the shipped model; site: leave one "
                        "site out (train on the others, score the site left out), a report, no model")
    p.add_argument("--modality", choices=("us", "mg"), required=True)
    p.add_argument("--out", type=Path, required=True, help="model folder, e.g. models/us-resnet18")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=40, help="epoch cap per fold (early stopping on val AUC)")
    p.add_argument("--patience", type=int, default=8, help="epochs without val-AUC gain before stopping")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=None,
                   help="seed of the fold split (default: --seed); keep it fixed to compare or ensemble runs")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/")
    p.add_argument("--synthetic", type=Path, default=None, help="ImageFolder of synthetic ROIs (training folds only)")
    p.add_argument("--synthetic-ratio", type=float, default=0.0,
                   help="synthetic ROIs added per real training ROI (e.g. 0.5)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    p.add_argument("--tta", action="store_true", help="average predictions over horizontal flip")
    p.add_argument("--margin-views", type=_margins, default=(),
                   help="ROI margins the pipeline averages at inference, e.g. 0.05,0.15,0.3 (manifest tta_margins)")
    p.add_argument("--roi-jitter", type=float, default=0.0,
                   help="extra zoom/shift augmentation (fraction of the ROI side) so the model tolerates the box "
                        "error of automatic lesion proposals, e.g. 0.25")
    p.add_argument("--scanner-aug", action="store_true",
                   help="also augment what another scanner changes: blur, lower resolution, depth-dependent gain (US), "
                        "wider gamma and contrast")
    p.add_argument("--intensity-aug", action="store_true",
                   help="wider gamma and contrast ranges only (film density and exposure), without the blur and "
                        "resampling of --scanner-aug")
    p.add_argument("--feature-head", action="store_true",
                   help="also fit a logistic-regression head on LiteMedSAM lesion features (computed from the "
                        "ROIs' source images, cached in each ROI folder) and combine it with the CNN")
    p.add_argument("--head-inputs", default="litemedsam",
                   help="what the feature head reads, comma-separated, one regression block each: litemedsam "
                        "(512 pooled embedding numbers), then optionally litemedsam-crop (the same from LiteMedSAM "
                        "encoding a crop around the lesion: one more encoder pass per lesion) and lesion-descriptors "
                        "(53 hand-made numbers on the lesion box; the MG recipe)")
    p.add_argument("--head-c", default=None,
                   help="the head's inverse L2 strength, one for every block or one per block, e.g. 0.01,0.1 "
                        "(default 0.003)")
    p.add_argument("--cnn-weight", type=_cnn_weight, default=0.5,
                   help="with a feature head: the CNN's weight w in logit = w CNN + (1 - w) head (default 0.5, the "
                        "plain mean), or 'auto': picked on the out-of-fold predictions (each fold's figures with the "
                        "weight picked on the other folds)")
    p.add_argument("--ema", type=float, default=0.0,
                   help="score and ship an exponential moving average of the weights with this decay per step, "
                        "e.g. 0.99 (0 = off)")
    p.add_argument("--mixup", type=float, default=0.0,
                   help="mixup between training ROIs with Beta(a, a), e.g. 0.2 (0 = off)")
    p.add_argument("--init", type=Path, default=None,
                   help="start every fold from these weights: one of our classifiers (e.g. "
                        "models/us-resnet18/weights.safetensors) or a torchvision-layout ResNet18 state dict such as "
                        "ImageNet weights (.safetensors, or .pth read with weights_only)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="training autocast: auto = bf16 on CUDA or CPUs with AMX/AVX512-BF16")
    p.add_argument("--version", default=None, help="model version string (default: date-based)")
    p.add_argument("--name", default=None, help="manifest name (default: OUT folder name)")
    p.add_argument("--no-register", action="store_true", help="do not write the models/manifest.json entry")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from branet_pacs.models.feature_head import DEFAULT_C, check_inputs
    from branet_pacs.train.classifier import ClassifierTrainSettings, leave_one_site_out, train_model

    settings = ClassifierTrainSettings(
        modality=args.modality, folds=args.folds, epochs=args.epochs, patience=args.patience,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed,
        synthetic_ratio=args.synthetic_ratio, device=args.device, threads=args.threads, tta=args.tta,
        precision=args.precision, init=str(args.init) if args.init else None,
        roi_jitter=args.roi_jitter, scanner_aug=args.scanner_aug, intensity_aug=args.intensity_aug,
        margin_views=args.margin_views,
        split_seed=args.split_seed, feature_head=args.feature_head or args.head_c is not None
        or args.head_inputs != "litemedsam", feature_head_inputs=check_inputs(args.head_inputs.split(",")),
        feature_head_c=tuple(float(c) for c in args.head_c.split(",")) if args.head_c else (DEFAULT_C,),
        ema=args.ema, mixup=args.mixup, cnn_weight=args.cnn_weight)
    if args.validate_by == "site":
        report = leave_one_site_out(args.data, args.out, settings, resume=args.resume, synthetic_dir=args.synthetic)
        print(f"{'held-out site':14} {'ROIs':>5} {'ROC AUC':>8} {'bal.acc':>8} {'sens':>6} {'spec':>6}  trained on")
        for site, r in report["held_out"].items():
            print(f"{site:14} {r['n']:5d} {r['roc_auc']:8.4f} {r['balanced_accuracy']:8.4f} {r['sensitivity']:6.3f} "
                  f"{r['specificity']:6.3f}  {'+'.join(r['trained_on'])} (CV AUC {r['train_cv_roc_auc']:.4f})"
                  + (f"; CNN alone {r['cnn_only_roc_auc']:.4f}, head alone {r['feature_head_only_roc_auc']:.4f}"
                     if "cnn_only_roc_auc" in r else ""))
        print(f"wrote {args.out}/leave-one-site-out.json")
        return 0
    result = train_model(args.data, args.out, settings, resume=args.resume, synthetic_dir=args.synthetic,
                         version=args.version, name=args.name, register=not args.no_register)
    summary, pooled = result["summary"], result["oof"]
    for key in ("roc_auc", "balanced_accuracy", "accuracy", "sensitivity", "specificity"):
        print(f"{key:>18}: folds {summary[key]['mean']:.4f} ± {summary[key]['sd']:.4f}, pooled out-of-fold "
              f"{pooled[key]:.4f}")
    print(f"threshold {result['threshold']:.4f}; wrote {args.out}")
    return 0


# --------------------------------------------------------------------------------------------- pretrain
def _register_pretrain(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain", help="self-supervised (SimCLR) pretraining of the classifier's ResNet18 on unlabelled images; "
                         "then `branet train --init OUT/backbone.safetensors`")
    p.add_argument("--data", nargs=2, metavar=("DATASET", "SRC"), required=True, action="append",
                   help="a dataset reader and its folder (e.g. cbis-ddsm ../shared/data/cbis-ddsm); repeatable, one "
                        "modality; no label is read")
    p.add_argument("--out", type=Path, required=True, help="folder for backbone.safetensors, pretrain.json, patches")
    p.add_argument("--steps", type=int, default=1000, help="optimiser steps (default 1000)")
    p.add_argument("--batch-size", type=int, default=128, help="patches per step, two views each (default 128)")
    p.add_argument("--size", type=int, default=96, help="side the views are trained at (default 96)")
    p.add_argument("--patches-per-image", type=int, default=16, help="random windows per image (default 16)")
    p.add_argument("--no-lesion-windows", action="store_true",
                   help="do not add the marked lesions' ROI windows to the random ones")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt (same settings)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_pretrain)


def _run_pretrain(args: argparse.Namespace) -> int:
    from branet_pacs.datasets.readers import READERS, modality_of
    from branet_pacs.errors import CommandError
    from branet_pacs.train.pretrain import BACKBONE_FILE, PretrainSettings, pretrain

    unknown = [name for name, _ in args.data if name not in READERS]
    if unknown:
        raise CommandError(f"unknown dataset {unknown[0]!r} (known: {', '.join(sorted(READERS))})")
    modalities = {modality_of(name) for name, _ in args.data}
    if len(modalities) != 1:
        raise CommandError(f"--data mixes modalities ({', '.join(sorted(modalities))}); pretrain one at a time")
    if args.steps < 1 or args.batch_size < 2 or args.size < 32 or args.patches_per_image < 0:
        raise CommandError("--steps >= 1, --batch-size >= 2, --size >= 32 and --patches-per-image >= 0 are needed")
    settings = PretrainSettings(
        modality=modalities.pop().lower(), patches_per_image=args.patches_per_image,
        lesion_windows=not args.no_lesion_windows, size=args.size, batch_size=args.batch_size, steps=args.steps,
        lr=args.lr, temperature=args.temperature, seed=args.seed, threads=args.threads)
    try:
        report = pretrain([(name, Path(src)) for name, src in args.data], args.out, settings, resume=args.resume,
                          quiet=args.quiet)
    except ValueError as exc:    # nothing to learn from, or a checkpoint of other settings: say so, no traceback
        raise CommandError(str(exc)) from exc
    last = report["history"][-1]
    print(f"{report['data']['patches']} patches from {report['data']['images']} images "
          f"({len(report['data']['skipped'])} skipped); {report['steps']} steps in {report['train_seconds']:.0f} s; "
          f"final loss {last['loss']:.3f}, pair accuracy {last['pair_accuracy']:.3f}")
    print(f"backbone: {Path(args.out) / BACKBONE_FILE}  (branet train --init {Path(args.out) / BACKBONE_FILE})")
    return 0
