"""`branet` console script: one sub-command per job, each defined next to the code it drives.

A command module exposes `register(subparsers)`, which adds its parser and sets `func(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules that contribute sub-commands, in help order.
COMMAND_MODULES = (
    "branet_pacs.analyze",               # branet analyze
    "branet_pacs.datasets.prepare",      # branet prepare
    "branet_pacs.train.commands",        # branet train / train-detector
    "branet_pacs.evaluation.commands",   # branet evaluate / evaluate-images / evaluate-proposals / agreement
    "branet_pacs.sngan.commands",        # branet sngan ...
    "branet_pacs.reanalysis.commands",   # branet reanalyze
    "branet_pacs.orthanc.commands",      # branet orthanc ...
    "branet_pacs.models.commands",       # branet export-models
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="branet", description="BraNet-PACS breast-imaging AI node (research use only)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def configure_logging(verbose: bool) -> None:
    """Warnings only by default (what happened to each input is in the command's own report, e.g. results.csv);
    `-v` shows every step. The DICOM libraries' own chatter (highdicom's per-object lines, pydicom's traceback for
    each decoder plugin it tries) is shown only with -v."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libraries(verbose)


def quiet_libraries(verbose: bool = False) -> None:
    """Silence the DICOM libraries' own log lines and warnings unless `verbose` (imported first: pydicom sets its
    logger's level when it is imported, which would undo a level set before)."""
    import highdicom  # noqa: F401
    import pydicom  # noqa: F401

    logging.captureWarnings(True)    # library warnings (pydicom's "unknown encoding"...) are log lines too
    for name in ("pydicom", "highdicom", "py.warnings"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    from branet_pacs.config import ConfigError
    from branet_pacs.errors import CommandError
    from branet_pacs.models.errors import ModelUnavailable

    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except (CommandError, ConfigError, ModelUnavailable) as exc:
        print(f"branet {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
