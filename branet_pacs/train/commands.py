"""CLI doors: `branet prepare`, `branet train`, `branet evaluate`, `branet agreement`.

Heavy modules (torch) are imported inside each command so `branet --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_prepare(subparsers)
    _register_train(subparsers)
    _register_evaluate(subparsers)
    _register_agreement(subparsers)


# --------------------------------------------------------------------------------------------- prepare
def _default_margin() -> float:
    from branet_pacs.config import load_config

    return load_config().segmentation.roi_margin


def _register_prepare(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("prepare", help="turn a dataset into 128x128 ImageFolder ROIs (+ manifest.csv)")
    kinds = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--margin", type=float, default=None,
                       help="ROI context margin as a fraction of the box (default: config segmentation.roi_margin)")
        p.add_argument("--force", action="store_true", help="empty OUT first (only a folder prepare wrote)")
        p.set_defaults(func=_run_prepare)

    busi = kinds.add_parser("busi", help="BUSI: SRC/<class>/<name>.png + masks/<name>_mask*.png")
    busi.add_argument("src", type=Path)
    busi.add_argument("out", type=Path)
    busi.add_argument("--include-normal", action="store_true", help="also write normal/ ROIs (centre window)")
    common(busi)

    mias = kinds.add_parser("mias", help="mini-MIAS: 1024x1024 films + Info.txt (origin bottom-left)")
    mias.add_argument("src", type=Path)
    mias.add_argument("out", type=Path)
    mias.add_argument("--min-radius", type=int, default=24,
                      help="smallest half-side of a lesion box in pixels (tiny calcification radii)")
    common(mias)

    boxes = kinds.add_parser("boxes", help="CSV of image,label,x0,y0,x1,y1[,group] (paths relative to IMAGES)")
    boxes.add_argument("csv", type=Path)
    boxes.add_argument("images", type=Path)
    boxes.add_argument("out", type=Path)
    common(boxes)


def _run_prepare(args: argparse.Namespace) -> int:
    from branet_pacs.train.prepare import prepare

    margin = _default_margin() if args.margin is None else args.margin
    report = prepare(args.dataset, args.out, src=getattr(args, "src", None), csv_path=getattr(args, "csv", None),
                     images=getattr(args, "images", None), margin=margin,
                     include_normal=getattr(args, "include_normal", False),
                     min_radius=getattr(args, "min_radius", 0), force=args.force)
    summary = ", ".join(f"{label} {n}" for label, n in sorted(report.rois.items())) or "none"
    print(f"{report.dataset}: {report.images} images -> ROIs: {summary}; skipped {len(report.skipped)}")
    for reason in report.skipped:
        print(f"  skipped: {reason}")
    print(f"wrote {args.out}/manifest.csv (margin {margin})")
    return 0


# --------------------------------------------------------------------------------------------- train
def _margins(text: str) -> tuple[float, ...]:
    try:
        margins = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"margins must be comma-separated numbers, got {text!r}") from None
    if not margins or any(not 0.0 <= m <= 2.0 for m in margins):
        raise argparse.ArgumentTypeError(f"margins must be between 0 and 2, got {text!r}")
    return margins


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="k-fold cross-validated ResNet18 training; writes models/NAME")
    p.add_argument("--data", type=Path, required=True, help="ImageFolder ROI dataset (from `branet prepare`)")
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
    from branet_pacs.train.trainer import TrainSettings, train_model

    settings = TrainSettings(
        modality=args.modality, folds=args.folds, epochs=args.epochs, patience=args.patience,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed,
        synthetic_ratio=args.synthetic_ratio, device=args.device, threads=args.threads, tta=args.tta,
        precision=args.precision, init=str(args.init) if args.init else None,
        roi_jitter=args.roi_jitter, margin_views=args.margin_views, split_seed=args.split_seed,
        ema=args.ema, mixup=args.mixup)
    result = train_model(args.data, args.out, settings, resume=args.resume, synthetic_dir=args.synthetic,
                         version=args.version, name=args.name, register=not args.no_register)
    summary, pooled = result["summary"], result["oof"]
    for key in ("roc_auc", "balanced_accuracy", "accuracy", "sensitivity", "specificity"):
        print(f"{key:>18}: folds {summary[key]['mean']:.4f} ± {summary[key]['sd']:.4f}, pooled out-of-fold "
              f"{pooled[key]:.4f}")
    print(f"threshold {result['threshold']:.4f}; wrote {args.out}")
    return 0


# --------------------------------------------------------------------------------------------- evaluate
def _register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="metrics of a model on an ImageFolder ROI dataset (+ segmentation Dice)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True, help="model folder, e.g. models/us-resnet18")
    p.add_argument("--out", type=Path, required=True, help="report JSON; predictions.csv etc. go next to it")
    p.add_argument("--images", type=Path, default=None,
                   help="root of the source images named in manifest.csv (default: the root prepare recorded)")
    p.add_argument("--no-segmentation", action="store_true", help="skip segmentation Dice even when masks exist")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from branet_pacs.train.evaluate import evaluate

    report = evaluate(args.data, args.model, args.out, images_root=args.images,
                      segmentation=not args.no_segmentation, device=args.device, threads=args.threads)
    c = report["classification"]
    print(f"n={c['n']} ROC AUC {c['roc_auc']} balanced accuracy {c['balanced_accuracy']} "
          f"accuracy {c['accuracy']} (threshold {report['threshold']:.4f})")
    if report.get("segmentation"):
        s = report["segmentation"]
        if s.get("n"):
            print(f"segmentation n={s['n']} Dice box {s['dice_box']['mean']} auto {s['dice_auto']['mean']} "
                  f"(detector: {s.get('detector')})")
    print(f"wrote {args.out}")
    return 0


# --------------------------------------------------------------------------------------------- agreement
def _register_agreement(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("agreement", help="reader-study statistics: Cohen's kappa (+p), per-reader metrics",
                              description="CSV format: header `file,label`, label benign|malignant (or B/M, 0/1). "
                                          "Files are matched by the `file` column.")
    p.add_argument("--ratings", type=Path, nargs=2, required=True, metavar=("A.csv", "B.csv"))
    p.add_argument("--truth", type=Path, default=None, help="ground truth CSV (same format)")
    p.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    p.set_defaults(func=_run_agreement)


def _run_agreement(args: argparse.Namespace) -> int:
    from branet_pacs.train.agreement import agreement_report, format_report

    report = agreement_report(args.ratings[0], args.ratings[1], args.truth)
    print(format_report(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0
