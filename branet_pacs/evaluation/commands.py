"""CLI doors of evaluation: `branet evaluate` (a classifier on ROIs, + segmentation Dice), `branet evaluate-images`
(the automatic pipeline on whole images), `branet evaluate-proposals` (LiteMedSAM on detector proposals) and
`branet agreement` (reader study).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from branet_pacs.evaluation import images, proposals

    _register_evaluate(subparsers)
    images.register(subparsers)
    proposals.register(subparsers)
    _register_agreement(subparsers)


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
    from branet_pacs.evaluation.rois import evaluate

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


def _register_agreement(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("agreement", help="reader-study statistics: Cohen's kappa (+p), per-reader metrics",
                              description="CSV format: header `file,label`, label benign|malignant (or B/M, 0/1). "
                                          "Files are matched by the `file` column.")
    p.add_argument("--ratings", type=Path, nargs=2, required=True, metavar=("A.csv", "B.csv"))
    p.add_argument("--truth", type=Path, default=None, help="ground truth CSV (same format)")
    p.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    p.set_defaults(func=_run_agreement)


def _run_agreement(args: argparse.Namespace) -> int:
    from branet_pacs.evaluation.agreement import agreement_report, format_report

    report = agreement_report(args.ratings[0], args.ratings[1], args.truth)
    print(format_report(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0
