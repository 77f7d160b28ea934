"""`branet analyze PATH... --out DIR`: every file in, SEG + SR per breast image out, and a results.csv that says
what happened to every file.

Every input gets at least one row, whatever it is: a file that is not DICOM or a DICOMDIR is `skipped` with the
reason, a dangling link, an unreadable file or a failure inside the analysis is an `error` naming the file and the
cause, and the run goes on with the next input. A second input with the same SOP Instance UID as an earlier one is
`skipped` as a duplicate (its outputs would have the same names and UIDs).

breasts.csv gives the breast-level result: per study, modality and laterality (e.g. a breast's CC and MLO views),
the highest p(malignant) over its findings and that finding's label (`types.breast_results`).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from tqdm import tqdm

from branet_pacs.config import Config, load_config
from branet_pacs.dicom.ingest import ingest
from branet_pacs.outputs import write_image_outputs
from branet_pacs.pipeline import Analyzer
from branet_pacs.types import Box, BreastResult, InstanceResult, ResultRow, Status, breast_results

log = logging.getLogger(__name__)

RESULTS_CSV = "results.csv"
BREASTS_CSV = "breasts.csv"


def iter_input_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Inputs named directly, and every entry under named folders (recursive, sorted; hidden entries skipped).

    Symbolic links are inputs of their own and never descended into (a link loop cannot trap the walk); whatever
    an entry turns out to be (a file, a dangling link, a link to a folder) its row says so.
    """
    for path in map(Path, paths):
        if path.is_dir() and not path.is_symlink():
            entries = []
            for folder, dirs, files in os.walk(path, followlinks=False):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                here = Path(folder)
                entries += [here / f for f in files if not f.startswith(".")]
                entries += [here / d for d in dirs if (here / d).is_symlink()]   # os.walk lists these as folders
            yield from sorted(entries)
        else:
            yield path


def result_rows(result: InstanceResult, out_dir: Path | None) -> list[ResultRow]:
    """results.csv rows for one instance (writing its outputs under `out_dir` when given): one per finding, one for
    an image without finding, one per failed image, or one for a skipped / unreadable instance."""
    base = ResultRow(source=result.source, sop_instance_uid=result.sop_instance_uid,
                     study_instance_uid=result.study_instance_uid, modality=result.modality)
    if result.ingest.status is not Status.OK:
        return [dataclasses.replace(base, status=result.ingest.status, reason=result.ingest.reason)]
    rows: list[ResultRow] = []
    for image in result.images:
        files = {out.kind: out.relative for out in write_image_outputs(image, out_dir)} if out_dir is not None else {}
        frame = f"frame {image.image.frame_number}: " if image.image.frame_number else ""
        row = dataclasses.replace(base, modality=image.image.modality, laterality=image.image.laterality or "",
                                  seg_file=files.get("SEG", ""),
                                  sr_file=files.get("SR", ""), cad_file=files.get("CAD", ""))
        if not image.findings:
            rows.append(dataclasses.replace(row, reason=f"{frame}analysed, no lesion found"))
        for finding in image.findings:
            rows.append(dataclasses.replace(
                row, reason=f"{frame}{finding.prompt} prompt".strip(), finding=finding.index, label=finding.label,
                p_malignant=finding.p_malignant, box=finding.box))
    for failure in result.failures:
        frame = f"frame {failure.image.frame_number}: " if failure.image.frame_number else ""
        rows.append(dataclasses.replace(base, status=Status.ERROR, reason=f"{frame}{failure.reason}"))
    return rows


def analyze_paths(paths: Iterable[str | Path], out_dir: Path, config: Config,
                  boxes: list[Box] | None = None, progress: bool = True) -> list[ResultRow]:
    """Analyse every input, write outputs and results.csv (flushed row by row, so a crash keeps what was done), then
    breasts.csv: one row per study, modality and breast, p(malignant) the highest over its views."""
    out_dir.mkdir(parents=True, exist_ok=True)
    analyzer = Analyzer(config)
    analyzer.segmenter()   # a missing or broken segmenter checkpoint is one error now, not one per file
    files = list(iter_input_files(paths))
    rows: list[ResultRow] = []
    views: list = []                 # analysed images, for breasts.csv
    first_of: dict[str, str] = {}    # SOP Instance UID -> the input that had it first
    csv_path = out_dir / RESULTS_CSV
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=ResultRow.CSV_COLUMNS)
        writer.writeheader()
        for path in tqdm(files, desc="analyze", unit="file", disable=not progress):
            try:
                found, result = _analyze_one(analyzer, path, boxes, out_dir, first_of)
                views += result.breast_views() if result is not None else []
            except Exception as exc:  # noqa: BLE001 - whatever fails, this input gets its row and the run goes on
                log.debug("analysis of %s failed", path, exc_info=True)
                found = [ResultRow(source=str(path), status=Status.ERROR,
                                   reason=f"{path}: internal error while analysing: {type(exc).__name__}: {exc}")]
            for row in found:
                row = dataclasses.replace(row, source=str(path))
                rows.append(row)
                writer.writerow(row.as_csv_row())
            handle.flush()
    with open(out_dir / BREASTS_CSV, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=BreastResult.CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(breast.as_csv_row() for breast in breast_results(views))
    return rows


def _analyze_one(analyzer: Analyzer, path: Path, boxes: list[Box] | None, out_dir: Path,
                 first_of: dict[str, str]) -> tuple[list[ResultRow], InstanceResult | None]:
    if path.is_symlink() and path.is_dir():
        return [ResultRow(source=str(path), status=Status.SKIPPED,
                          reason=f"{path}: symbolic link to a folder, not followed (name the folder itself)")], None
    outcome = ingest(path, analyzer.config.ingest)
    result = InstanceResult(outcome)
    sop = result.sop_instance_uid
    if outcome.status is Status.OK and sop in first_of:
        return [ResultRow(source=str(path), sop_instance_uid=sop, study_instance_uid=result.study_instance_uid,
                          modality=result.modality, status=Status.SKIPPED,
                          reason=f"duplicate: SOP Instance UID {sop} was analysed already from {first_of[sop]}")], None
    if outcome.status is Status.OK:
        first_of[sop] = str(path)
    result = analyzer.analyze_ingested(outcome, boxes)
    return result_rows(result, out_dir), result


def parse_box(text: str) -> Box:
    try:
        x0, y0, x1, y1 = (int(round(float(v))) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--box wants x0,y0,x1,y1 in pixels, got {text!r}") from None
    if x1 <= x0 or y1 <= y0:
        raise argparse.ArgumentTypeError(f"--box {text!r}: x1 must exceed x0 and y1 exceed y0")
    return x0, y0, x1, y1


def print_summary(rows: list[ResultRow]) -> None:
    print(f"{'status':8} {'modality':8} {'finding':7} {'label':10} {'p_malig':>7}  source / reason")
    for row in rows:
        p = "" if row.p_malignant is None else f"{row.p_malignant:.3f}"
        print(f"{row.status.value:8} {row.modality:8} {'' if row.finding is None else row.finding!s:7} "
              f"{row.label:10} {p:>7}  {Path(row.source).name}: {row.reason}")
    counts = {s: sum(r.status is s for r in rows) for s in Status}
    print(f"rows: {len(rows)}  ok: {counts[Status.OK]}  skipped: {counts[Status.SKIPPED]}  error: {counts[Status.ERROR]}")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    segmentation = config.segmentation
    if args.segmenter:
        segmentation = dataclasses.replace(segmentation, segmenter=args.segmenter)
    if args.sam_checkpoint:
        segmentation = dataclasses.replace(segmentation, segmenter="sam", sam_checkpoint=args.sam_checkpoint)
    if args.sam_model_type:
        segmentation = dataclasses.replace(segmentation, sam_model_type=args.sam_model_type)
    config = dataclasses.replace(config, segmentation=segmentation)
    if args.models_dir:
        config = dataclasses.replace(config, models_dir=str(Path(args.models_dir).resolve()))
    out_dir = Path(args.out)
    rows = analyze_paths(args.paths, out_dir, config, boxes=args.box or None, progress=not args.no_progress)
    if not args.quiet:
        print_summary(rows)
    print(f"results: {out_dir / RESULTS_CSV}  breasts: {out_dir / BREASTS_CSV}")
    return 1 if any(row.status is Status.ERROR for row in rows) else 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("analyze", help="analyse DICOM files/folders; write SEG + SR + results.csv",
                                   description=__doc__)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="DICOM files or folders (searched recursively)")
    parser.add_argument("--out", required=True, help="output folder (DIR/<StudyInstanceUID>/..., DIR/results.csv)")
    parser.add_argument("--config", help="TOML settings (default: config/branet.toml)")
    parser.add_argument("--box", action="append", type=parse_box, metavar="x0,y0,x1,y1",
                        help="lesion box on the source frame (repeatable); skips automatic proposals")
    parser.add_argument("--segmenter", choices=["litemedsam", "sam"])
    parser.add_argument("--sam-checkpoint", help="SAM ViT checkpoint file (implies --segmenter sam)")
    parser.add_argument("--sam-model-type", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--models-dir", help="folder with manifest.json and weights (default: models/)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no summary table")
    parser.set_defaults(func=run)
