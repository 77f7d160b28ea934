"""Per-stage pipeline timings on CPU for a 640x480 US frame and a ~4000x3000 12-bit mammogram.

Inputs are the bundled samples (samples/) resampled to those sizes and written as ordinary DICOM files, so decode is
measured from bytes. Prints median seconds per stage over REPEATS runs and the share of wall time spent outside model
forward passes (detector, segmenter, classifier).   Run: .venv/bin/python benchmarks/bench_pipeline.py [--repeats N]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import numpy as np
import pydicom
from skimage.transform import resize

from branet_pacs.config import load_config
from branet_pacs.dicom.ingest import ingest
from branet_pacs.pipeline import Analyzer

REPO = Path(__file__).resolve().parent.parent
MODEL_STAGES = ("propose", "segment", "classify")   # stages that are (mostly) model forward passes


def resampled(path: Path, rows: int, cols: int) -> bytes:
    """The sample at a new size, re-encoded uncompressed (Explicit VR Little Endian)."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    big = resize(pixels.astype(np.float32), (rows, cols), order=1, preserve_range=True)
    ds.PixelData = np.round(big).astype(pixels.dtype).tobytes()
    ds.Rows, ds.Columns = rows, cols
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def measure(analyzer: Analyzer, raw: bytes, repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    for _ in range(repeats):
        start = time.perf_counter()
        outcome = ingest(raw, analyzer.config.ingest, "bench")
        decode = time.perf_counter() - start
        if not outcome.images:
            raise SystemExit(f"bench input not analysable: {outcome.status.value} {outcome.reason}")
        result = analyzer.analyze_image(outcome.images[0])
        times.setdefault("decode", []).append(decode)
        for stage, seconds in result.timings.items():
            times.setdefault(stage, []).append(seconds)
        times.setdefault("total", []).append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--config", help="settings TOML (e.g. to set threads)")
    args = parser.parse_args()
    analyzer = Analyzer(load_config(args.config))
    cases = {
        "US 640x480 8-bit": resampled(REPO / "samples/us-study/US1.dcm", 480, 640),
        "MG 4000x3000 12-bit": resampled(REPO / "samples/mg-study/MG2.dcm", 4000, 3000),
    }
    print("(each run is the automatic path: detector proposals -> LiteMedSAM -> ROI -> ResNet18 -> SEG + SR)")
    stages = ("decode", "propose", "segment", "classify", "encode")   # classify: ROI cuts + ResNet18
    print(f"median seconds over {args.repeats} runs (after one warm-up), torch threads = {analyzer.config.threads or 'all'}")
    print(f"{'case':22}" + "".join(f"{s:>11}" for s in stages) + f"{'total':>9}{'non-model':>11}")
    for name, raw in cases.items():
        measure(analyzer, raw, 1)  # warm-up: model loading, allocator
        times = measure(analyzer, raw, args.repeats)
        med = {stage: statistics.median(values) for stage, values in times.items()}
        model = sum(med.get(s, 0.0) for s in MODEL_STAGES)
        share = 1.0 - model / med["total"]
        print(f"{name:22}" + "".join(f"{med.get(s, 0.0):11.3f}" for s in stages) + f"{med['total']:9.3f}{share:10.0%}"
              + ("" if med.get("segment", 0.0) > 0 else "   (no lesion proposed: nothing segmented)"))


if __name__ == "__main__":
    main()
