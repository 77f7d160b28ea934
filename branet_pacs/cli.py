"""`branet` console script: one sub-command per job, each defined next to the code it drives.

A command module exposes `register(subparsers)`, which adds its parser and sets `func(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules that contribute sub-commands, in help order. A module that is missing (not built yet) is left out.
COMMAND_MODULES = (
    "branet_pacs.analyze",          # branet analyze
    "branet_pacs.train.commands",   # branet prepare / train / evaluate / agreement
    "branet_pacs.train.detector",   # branet train-detector / evaluate-proposals
    "branet_pacs.train.image_eval",  # branet evaluate-images
    "branet_pacs.sngan.commands",   # branet sngan ...
    "branet_pacs.pacs.commands",    # branet reanalyze
    "branet_pacs.service.commands",  # branet orthanc ...
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="branet", description="BraNet-PACS breast-imaging AI node (research use only)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
