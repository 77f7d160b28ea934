"""`branet orthanc run|config|status`: run Debian's Orthanc with the BraNet plugin, or look at a running one."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from branet_pacs.orthanc.orthanc_config import (
    DEFAULT_TEMPLATE,
    ORTHANC_BINARY,
    PYTHON_PLUGIN,
    GeneratedConfig,
    RunOptions,
    generate_config,
)
from branet_pacs.orthanc.viewer import study_url


def _options(args: argparse.Namespace) -> RunOptions:
    overrides = {}
    if args.max_attempts is not None:
        overrides["MaxAttempts"] = args.max_attempts
    return RunOptions(
        data_dir=Path(args.data), dicom_port=args.dicom_port, http_port=args.http_port,
        allow_senders=tuple(args.allow_sender or ()), forward=tuple(args.forward or ()),
        forward_whole_study=True if args.forward_whole_study else None, stable_age=args.stable_age,
        workers=args.workers, aet=args.aet, branet_config=Path(args.config) if args.config else None,
        template=Path(args.template), overrides=overrides)


def _describe(generated: GeneratedConfig) -> str:
    config = generated.config
    senders = [f"{m['AET']}@{m['Host']}" for m in config["DicomModalities"].values() if m.get("AllowStore")]
    forward = config["BraNet"]["Forward"]["Destinations"]
    lines = [
        f"BraNet-PACS Orthanc  AET {config['DicomAet']}  DICOM port {config['DicomPort']}  "
        f"HTTP port {config['HttpPort']}",
        f"  Explorer:     {generated.explorer_url}  (log in with {generated.credentials_path})",
        f"  OHIF viewer:  {study_url('<StudyInstanceUID>', generated.http_url)}"
        + ("" if Path(config["BraNet"]["OhifDirectory"], "index.html").is_file() else "  (not installed: make setup)"),
        f"  configuration {generated.path}",
        f"  senders:      {', '.join(senders) if senders else 'NONE - add --allow-sender AET@HOST'}",
        f"  forwarding:   {', '.join(forward) if forward else 'none'}",
        "  note: Orthanc 1.10 listens on all interfaces; HTTP is limited to localhost (RemoteAccessAllowed false)"
        " and DICOM to the senders above. See docs/orthanc.md for TLS and HTTPS.",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    for path in (ORTHANC_BINARY, PYTHON_PLUGIN):
        if not path.exists():
            print(f"branet orthanc: {path} is missing (apt-get install orthanc orthanc-python)", file=sys.stderr)
            return 2
    generated = generate_config(_options(args))
    print(_describe(generated), flush=True)
    sys.stderr.flush()
    os.execv(str(ORTHANC_BINARY), [str(ORTHANC_BINARY), str(generated.path)])
    return 0  # not reached


def config(args: argparse.Namespace) -> int:
    generated = generate_config(_options(args))
    print(_describe(generated))
    return 0


def status(args: argparse.Namespace) -> int:
    from branet_pacs.errors import CommandError
    from branet_pacs.orthanc.credentials import load_credentials
    from branet_pacs.orthanc.rest import HttpOrthanc, OrthancError

    data = Path(args.data).resolve()
    if not (data / "orthanc.json").is_file():
        raise CommandError(f"no node was started with --data {data} (there is no {data / 'orthanc.json'}): start one "
                           "with `branet orthanc run --data DIR`, or name its folder with --data")
    generated = json.loads((data / "orthanc.json").read_text(encoding="utf-8"))
    credentials = load_credentials(data / "credentials.json")
    api = HttpOrthanc(f"http://127.0.0.1:{generated['HttpPort']}", credentials.username, credentials.password,
                      timeout=10)
    try:
        uri = f"/branet/studies/{args.study}" if args.study else "/branet/status"
        print(json.dumps(api.get_json(uri), indent=2))
    except OrthancError as exc:
        print(f"branet orthanc status: {exc}", file=sys.stderr)
        return 1
    return 0


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="var", help="storage, index, credentials and BraNet state (default ./var)")
    parser.add_argument("--dicom-port", type=int, help="DICOM port (template default 4242)")
    parser.add_argument("--http-port", type=int, help="HTTP port (template default 8042)")
    parser.add_argument("--allow-sender", action="append", metavar="AET@HOST",
                        help="accept C-STORE from this AE title at this host (repeatable; AET@HOST:PORT also works)")
    parser.add_argument("--forward", action="append", metavar="NAME=AET@HOST:PORT",
                        help="send SEG + SR to this DICOM destination (repeatable; NAME alone for a modality "
                             "already in the template)")
    parser.add_argument("--forward-whole-study", action="store_true", help="forward the whole study, not only "
                        "BraNet's outputs")
    parser.add_argument("--stable-age", type=int, help="seconds without new instances before a study is analysed")
    parser.add_argument("--workers", type=int, help="analysis worker processes (default 1)")
    parser.add_argument("--max-attempts", type=int, help="attempts per study before it is marked failed")
    parser.add_argument("--aet", help="our AE title (default BRANET)")
    parser.add_argument("--config", help="pipeline settings TOML (default config/branet.toml)")
    parser.add_argument("--template", default=str(DEFAULT_TEMPLATE), help="Orthanc configuration template")


def register(subparsers) -> None:
    parser = subparsers.add_parser("orthanc", help="run the Orthanc node with the BraNet plugin",
                                   description=__doc__)
    commands = parser.add_subparsers(dest="orthanc_command", required=True, metavar="ACTION")
    run_parser = commands.add_parser("run", help="generate the configuration and run Orthanc in the foreground")
    _add_run_options(run_parser)
    run_parser.set_defaults(func=run)
    config_parser = commands.add_parser("config", help="only generate DIR/orthanc.json and DIR/credentials.json")
    _add_run_options(config_parser)
    config_parser.set_defaults(func=config)
    status_parser = commands.add_parser("status", help="print /branet/status (or one study) of a running node")
    status_parser.add_argument("--data", default="var")
    status_parser.add_argument("--study", help="Orthanc study id")
    status_parser.set_defaults(func=status)
