"""`branet prepare DATASET ... OUT`: a public dataset -> a ROI dataset (`datasets.rois` layout; 128x128 unless
`--roi-size` says otherwise)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from branet_pacs.datasets.boxes import read_boxes
from branet_pacs.datasets.bus_uclm import read_bus_uclm
from branet_pacs.datasets.busi import read_busi
from branet_pacs.datasets.cbis_ddsm import DEFAULT_ASPECT, read_cbis_ddsm
from branet_pacs.datasets.mias import read_mias
from branet_pacs.datasets.rois import PrepareReport, write_roi_dataset
from branet_pacs.imaging.roi import DEFAULT_WINDOW, ROI_SIZE, WINDOW_DESCRIPTIONS, WINDOWS

log = logging.getLogger(__name__)


def prepare(dataset: str, out: Path, *, src: Path | None = None, csv_path: Path | None = None,
            images: Path | None = None, margin: float, window: str = DEFAULT_WINDOW, include_normal: bool = False,
            min_radius: int = 0, aspect: float = DEFAULT_ASPECT, roi_size: int = ROI_SIZE,
            force: bool = False) -> PrepareReport:
    """Run one dataset reader and write the ROI dataset to `out`. Returns the report (also saved as JSON)."""
    root = Path(images if dataset == "boxes" else src).resolve()
    report = PrepareReport(dataset, str(root), margin, window, roi_size=roi_size)
    if dataset == "busi":
        cases = read_busi(root, include_normal)
    elif dataset == "bus-uclm":
        cases = read_bus_uclm(root, include_normal)
    elif dataset == "mias":
        cases = read_mias(root, min_radius)
    elif dataset == "cbis-ddsm":
        cases = read_cbis_ddsm(root, aspect)
    elif dataset == "boxes":
        cases = read_boxes(Path(csv_path), root)
    else:
        raise ValueError(f"unknown dataset kind {dataset!r}")
    write_roi_dataset(cases, Path(out), report, force, normal_windows=include_normal)
    for reason in report.skipped:
        log.warning("skipped %s", reason)
    return report


def _roi_size(text: str) -> int:
    size = int(text)
    if not 32 <= size <= 512 or size % 16:
        raise argparse.ArgumentTypeError(f"--roi-size must be a multiple of 16 between 32 and 512, got {text}")
    return size


def _default_margin() -> float:
    from branet_pacs.config import load_config

    return load_config().segmentation.roi_margin


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("prepare", help="turn a dataset into ImageFolder ROIs (+ manifest.csv)")
    kinds = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--margin", type=float, default=None,
                       help="ROI context margin as a fraction of the box (default: config segmentation.roi_margin)")
        p.add_argument("--window", choices=WINDOWS, default=DEFAULT_WINDOW,
                       help="ROI grey levels mapped onto [0, 1]: "
                            + "; ".join(f"{name} = {text}" for name, text in WINDOW_DESCRIPTIONS.items()))
        p.add_argument("--roi-size", type=_roi_size, default=ROI_SIZE,
                       help=f"side of the square ROIs in pixels (default {ROI_SIZE}, the BraNet size; a classifier "
                            "trained on them records it, and the pipeline cuts its ROIs at that size)")
        p.add_argument("--force", action="store_true", help="empty OUT first (only a folder prepare wrote)")
        p.set_defaults(func=run)

    busi = kinds.add_parser("busi", help="BUSI: SRC/<class>/<name>.png + masks/<name>_mask*.png")
    busi.add_argument("src", type=Path)
    busi.add_argument("out", type=Path)
    busi.add_argument("--include-normal", action="store_true", help="also write normal/ ROIs (centre window)")
    common(busi)

    uclm = kinds.add_parser("bus-uclm", help="BUS-UCLM: the BUSI layout, folds grouped by patient, info.csv flags")
    uclm.add_argument("src", type=Path)
    uclm.add_argument("out", type=Path)
    uclm.add_argument("--include-normal", action="store_true", help="also write normal/ ROIs (centre window)")
    common(uclm)

    mias = kinds.add_parser("mias", help="mini-MIAS: 1024x1024 films + Info.txt (origin bottom-left)")
    mias.add_argument("src", type=Path)
    mias.add_argument("out", type=Path)
    mias.add_argument("--min-radius", type=int, default=24,
                      help="smallest half-side of a lesion box in pixels (tiny calcification radii)")
    common(mias)

    cbis = kinds.add_parser("cbis-ddsm", help="CBIS-DDSM masses: films/*.jpg + lesions.csv, grouped by patient")
    cbis.add_argument("src", type=Path)
    cbis.add_argument("out", type=Path)
    cbis.add_argument("--aspect", type=float, default=DEFAULT_ASPECT,
                      help="rows/columns of the original films: stretches the squashed 800x800 copies back "
                           f"(default {DEFAULT_ASPECT}, from the mass boxes' median width/height; 1 = as stored)")
    common(cbis)

    boxes = kinds.add_parser("boxes", help="CSV of image,label,x0,y0,x1,y1[,group] (paths relative to IMAGES)")
    boxes.add_argument("csv", type=Path)
    boxes.add_argument("images", type=Path)
    boxes.add_argument("out", type=Path)
    common(boxes)


def run(args: argparse.Namespace) -> int:
    margin = _default_margin() if args.margin is None else args.margin
    report = prepare(args.dataset, args.out, src=getattr(args, "src", None), csv_path=getattr(args, "csv", None),
                     images=getattr(args, "images", None), margin=margin, window=args.window,
                     include_normal=getattr(args, "include_normal", False),
                     min_radius=getattr(args, "min_radius", 0), aspect=getattr(args, "aspect", DEFAULT_ASPECT),
                     roi_size=args.roi_size, force=args.force)
    summary = ", ".join(f"{label} {n}" for label, n in sorted(report.rois.items())) or "none"
    print(f"{report.dataset}: {report.images} images -> ROIs: {summary}; skipped {len(report.skipped)}")
    for reason in report.skipped:
        print(f"  skipped: {reason}")
    print(f"wrote {args.out}/manifest.csv (margin {margin}, window {args.window}, {args.roi_size}x{args.roi_size})")
    return 0
