"""Per-stage pipeline timings on CPU, eager PyTorch vs ONNX Runtime, for a 640x480 US frame and a ~4000x3000 12-bit
mammogram; then `branet analyze` end to end on a folder of 12 distinct US files (model loading excluded).

Inputs are the bundled samples (samples/) resampled to those sizes and written as ordinary DICOM files, so decode is
measured from bytes. Prints median seconds per stage over REPEATS runs, the share of wall time outside model forward
passes (detector, segmenter, classifier), and the worker's resident memory with every model loaded.
Run: .venv/bin/python benchmarks/bench_pipeline.py [--repeats N] [--threads T]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from skimage.transform import resize

from branet_pacs.analyze import analyze_paths
from branet_pacs.config import load_config
from branet_pacs.dicom.ingest import ingest
from branet_pacs.models.runtime import available_cores
from branet_pacs.pipeline import Analyzer

REPO = Path(__file__).resolve().parent.parent
MODEL_STAGES = ("propose", "segment", "classify")   # stages that are (mostly) model forward passes
STAGES = ("decode", "propose", "segment", "classify", "encode")   # classify: ROI cuts + ResNet18 (+ feature head)


def resampled(path: Path, rows: int, cols: int, sop_suffix: str = "") -> bytes:
    """The sample at a new size, re-encoded uncompressed (Explicit VR Little Endian)."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    big = resize(pixels.astype(np.float32), (rows, cols), order=1, preserve_range=True)
    ds.PixelData = np.round(big).astype(pixels.dtype).tobytes()
    ds.Rows, ds.Columns = rows, cols
    if sop_suffix:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{ds.SOPInstanceUID}.{sop_suffix}"
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


def folder_run(config, folder: Path) -> float:
    """Seconds per image of `analyze_paths` over the folder, with the models already loaded in this process."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        rows = analyze_paths([folder], Path(out), config, progress=False)
        elapsed = time.perf_counter() - start
    if not all(r.status.value == "ok" for r in rows):
        raise SystemExit("bench folder: not every image was analysed")
    return elapsed / len({r.source for r in rows})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="threads per process (0 = all cores)")
    parser.add_argument("--config", help="settings TOML")
    args = parser.parse_args()
    base = dataclasses.replace(load_config(args.config), threads=args.threads)
    cases = {
        "US 640x480 8-bit": resampled(REPO / "samples/us-study/US1.dcm", 480, 640),
        "MG 4000x3000 12-bit": resampled(REPO / "samples/mg-study/MG2.dcm", 4000, 3000),
    }
    threads = args.threads or available_cores()
    print("(each run is the automatic path: detector proposals -> LiteMedSAM -> ROI -> ResNet18 -> SEG + SR)")
    print(f"median seconds over {args.repeats} runs (after one warm-up), {threads} thread(s) per process")
    print(f"{'case':22}{'engine':>7}" + "".join(f"{s:>10}" for s in STAGES) + f"{'total':>9}{'non-model':>11}")
    per_image: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        for i in range(12):
            Path(folder, f"US{i:02d}.dcm").write_bytes(resampled(REPO / "samples/us-study/US1.dcm", 480, 640, str(i)))
        for engine in ("torch", "onnx"):
            config = dataclasses.replace(base, engine=engine)
            analyzer = Analyzer(config)
            analyzer.warm_up()
            for name, raw in cases.items():
                measure(analyzer, raw, 1)  # warm-up: allocator, first-call paths
                times = measure(analyzer, raw, args.repeats)
                med = {stage: statistics.median(values) for stage, values in times.items()}
                model = sum(med.get(s, 0.0) for s in MODEL_STAGES)
                share = 1.0 - model / med["total"]
                print(f"{name:22}{engine:>7}" + "".join(f"{med.get(s, 0.0):10.3f}" for s in STAGES)
                      + f"{med['total']:9.3f}{share:10.0%}")
            per_image[engine] = folder_run(config, Path(folder))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print()
    print("branet analyze on a folder of 12 distinct 640x480 US files (models loaded beforehand):")
    for engine, seconds in per_image.items():
        print(f"  {engine:6} {seconds:.3f} s per image")
    print(f"peak RSS of this process (both engines' models loaded): {rss:.0f} MiB")


if __name__ == "__main__":
    main()
