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
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="branet", description="BraNet-PACS breast-imaging AI node (research use only)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
