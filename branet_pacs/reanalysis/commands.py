"""`branet reanalyze --source SRC [--dest DEST] [--query KEY=VALUE ...] [--since YYYYMMDD] [--until YYYYMMDD]
[--workers N] [--engine local|ray [--ray-address ADDR]] [--state FILE] [--force]`: re-run the current models over an archive's breast studies.

SRC / DEST: dimse://AET@host:port, dicomweb+http(s)://host/path or folder:DIR (DEST defaults to `same`).
Exit status: 0 every listed study analysed or skipped, 1 some studies ended in error or failed, 2 a source or
destination cannot be reached (one line on stderr naming the URL and the cause) or the arguments are wrong, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pydicom.datadict import tag_for_keyword

from branet_pacs.config import load_config
from branet_pacs.reanalysis.archive import (
    DEFAULT_CALLING_AET,
    DEFAULT_RECEIVE_PORT,
    ArchiveUnreachable,
    ConnectionOptions,
    StudyQuery,
    date_range,
    validate_url,
)
from branet_pacs.reanalysis.ray_engine import EngineUnavailable
from branet_pacs.reanalysis.run import ReanalyzeOptions, Summary, reanalyze, with_models_dir
from branet_pacs.reanalysis.state import StateBusy

EXIT_FAILED, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 1, 2, 130
MAX_FAILURES_SHOWN = 20


def parse_key_value(text: str) -> tuple[str, str]:
    keyword, sep, value = text.partition("=")
    keyword = keyword.strip()
    if not sep or not keyword:
        raise argparse.ArgumentTypeError(f"--query wants KEY=VALUE (e.g. AccessionNumber=A123), got {text!r}")
    if tag_for_keyword(keyword) is None:
        raise argparse.ArgumentTypeError(f"--query: {keyword!r} is not a DICOM attribute keyword "
                                         "(e.g. StudyDescription, AccessionNumber, ModalitiesInStudy)")
    return keyword, value


def build_query(args: argparse.Namespace) -> StudyQuery:
    keys = dict(args.query or [])
    dates = date_range(args.since, args.until)
    if dates:
        if "StudyDate" in keys:
            raise ValueError("give the study date either with --since/--until or with --query StudyDate=..., not both")
        keys["StudyDate"] = dates
    if args.accession:
        keys["AccessionNumber"] = args.accession
    modalities = tuple(dict.fromkeys(m.upper() for m in (args.modality or [])))
    return StudyQuery(keys=keys, modalities=modalities)


def print_summary(summary: Summary, state: str, log_file: str) -> None:
    counts = summary.counts
    minutes = summary.seconds / 60.0
    rate = f", {counts['analysed'] / minutes:.1f} studies/min" if counts["analysed"] and minutes > 0 else ""
    print(f"reanalyze: {summary.listed} listed: {counts['analysed']} analysed, {counts['skipped']} skipped, "
          f"{counts['error']} error, {counts['failed']} failed in {summary.seconds:.0f} s{rate}")
    for (status, reason), n in sorted(summary.reasons.items()):
        print(f"  {status:8} {n:6}  {reason}")
    for uid, detail in summary.failures[:MAX_FAILURES_SHOWN]:
        print(f"  study {uid}: {detail}")
    if len(summary.failures) > MAX_FAILURES_SHOWN:
        print(f"  ... {len(summary.failures) - MAX_FAILURES_SHOWN} more failures in the log")
    if summary.interrupted:
        print("  interrupted: run the same command again to go on")
    print(f"state: {state}  log: {log_file}")


def run(args: argparse.Namespace) -> int:
    if not args.verbose:
        # pynetdicom and dicomweb-client log every association and failed request; we report them ourselves
        for name in ("pynetdicom", "dicomweb_client"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        logging.getLogger("branet_pacs").setLevel(logging.WARNING)
    try:
        validate_url(args.source)
        if args.dest != "same":
            validate_url(args.dest)
        connection = ConnectionOptions(
            calling_aet=args.calling_aet, receive_aet=args.receive_aet or "", receive_port=args.receive_port,
            retrieve=args.retrieve, username=args.user or "", timeout=args.timeout)
        options = ReanalyzeOptions(source=args.source, dest=args.dest, query=build_query(args), workers=args.workers,
                                   state=args.state, log=args.log, force=args.force, connection=connection,
                                   progress=not args.no_progress, engine=args.engine,
                                   ray_address=args.ray_address or os.environ.get("RAY_ADDRESS") or None,
                                   cpus_per_worker=args.cpus_per_worker)
        if args.workers < 1:
            raise ValueError("--workers must be at least 1")
        if args.cpus_per_worker < 1:
            raise ValueError("--cpus-per-worker must be at least 1")
        if args.engine != "ray" and (args.ray_address or args.cpus_per_worker != 1):
            raise ValueError("--ray-address and --cpus-per-worker go with --engine ray")
    except ValueError as exc:
        print(f"branet reanalyze: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    config = with_models_dir(load_config(args.config), args.models_dir)
    try:
        summary = reanalyze(options, config)
    except (ArchiveUnreachable, StateBusy, EngineUnavailable) as exc:
        print(f"branet reanalyze: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print_summary(summary, str(options.state_path()), str(options.log_path()))
    if summary.aborted:
        print(f"branet reanalyze: {summary.aborted}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if summary.counts["failed"] or summary.counts["error"] else 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "reanalyze", help="re-analyse an archive's breast studies (DIMSE, DICOMweb or folder); resumable",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, metavar="SRC",
                        help="dimse://AET@host:port | dicomweb+http(s)://host/path | folder:DIR")
    parser.add_argument("--dest", default="same", metavar="DEST",
                        help="where SEG + SR go: same (default: back to SRC) or another archive URL")
    parser.add_argument("--query", action="append", type=parse_key_value, metavar="KEY=VALUE",
                        help="study-level matching key, DICOM keyword and matching value (repeatable), "
                             "e.g. AccessionNumber=A123 or StudyDescription=*MAMMO*")
    parser.add_argument("--since", metavar="YYYYMMDD", help="first study date (inclusive)")
    parser.add_argument("--until", metavar="YYYYMMDD", help="last study date (inclusive)")
    parser.add_argument("--modality", action="append", choices=["MG", "US"],
                        help="only studies holding this modality (repeatable; default: any breast study)")
    parser.add_argument("--accession", metavar="NUMBER", help="only the study with this accession number")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="analysis processes, or Ray actors with --engine ray (default 1)")
    parser.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="local: worker processes on this machine (default); ray: actors on a Ray cluster")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="the Ray cluster (HOST:PORT of its head, or ray://HOST:PORT; default $RAY_ADDRESS, "
                             "else a new Ray instance on this machine)")
    parser.add_argument("--cpus-per-worker", type=int, default=1, metavar="N",
                        help="ray: CPUs each actor reserves and uses as intra-op threads (default 1)")
    parser.add_argument("--state", metavar="FILE",
                        help="SQLite state file (default var/reanalyze/<source>.sqlite); the same file resumes")
    parser.add_argument("--log", metavar="FILE", help="JSONL log (default: the state file with .jsonl)")
    parser.add_argument("--force", action="store_true",
                        help="redo studies that were done or already hold a result of the current model version")
    dimse = parser.add_argument_group("DIMSE")
    dimse.add_argument("--calling-aet", default=DEFAULT_CALLING_AET, help=f"our AE title (default {DEFAULT_CALLING_AET})")
    dimse.add_argument("--retrieve", choices=["move", "get"], default="move",
                       help="C-MOVE to our storage SCP (default; the archive must know it) or C-GET")
    dimse.add_argument("--receive-aet", help="AE title of our storage SCP for C-MOVE (default: --calling-aet)")
    dimse.add_argument("--receive-port", type=int, default=DEFAULT_RECEIVE_PORT,
                       help=f"port of our storage SCP for C-MOVE (default {DEFAULT_RECEIVE_PORT})")
    web = parser.add_argument_group("DICOMweb (password: $BRANET_PACS_PASSWORD; token: $BRANET_PACS_TOKEN)")
    web.add_argument("--user", help="basic-auth user (default $BRANET_PACS_USER or the URL's user)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per network operation (default 60)")
    parser.add_argument("--config", help="TOML settings (default: config/branet.toml)")
    parser.add_argument("--models-dir", help="folder with manifest.json and weights (default: models/)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
