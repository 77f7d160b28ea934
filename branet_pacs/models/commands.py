"""`branet export-models`: export every shipped model to the inference engine now (set-up runs it), so that the
first image analysed after installation does not pay for it. Idempotent: graphs whose checksum holds are kept."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from branet_pacs.config import load_config
    from branet_pacs.errors import CommandError
    from branet_pacs.models.onnx_engine import default_cache_dir
    from branet_pacs.pipeline import Analyzer

    config = load_config(args.config)
    if config.engine != "onnx":
        print(f"engine is '{config.engine}' in the settings: nothing to export")
        return 0
    started = time.perf_counter()
    analyzer = Analyzer(dataclasses.replace(config, device="cpu"))
    missing = analyzer.warm_up()
    folder = config.engine_cache or default_cache_dir()
    graphs = sorted(p.name for p in Path(folder).glob("*.onnx"))
    print(f"engine cache {folder}: {len(graphs)} graph(s) ready in {time.perf_counter() - started:.0f} s")
    for name in graphs:
        print(f"  {name}")
    if missing:
        raise CommandError("some models are unavailable: " + "; ".join(missing))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export-models", help="export the shipped models to ONNX Runtime now",
                                   description=__doc__)
    parser.add_argument("--config", help="TOML settings (default: config/branet.toml)")
    parser.set_defaults(func=run)
