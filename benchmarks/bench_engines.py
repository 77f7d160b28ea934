"""Each model's forward pass on each CPU engine: eager PyTorch, ONNX Runtime fp32 (the shipped engine) and ONNX
Runtime int8 (dynamic quantisation of the same graph), with the largest output difference from eager PyTorch.
int8 is measured, not offered: it only pays on CPUs with VNNI, and it moves LiteMedSAM's embedding far more than the
|dp| <= 0.01 / Dice >= 0.99 budget (see the table). Run: .venv/bin/python benchmarks/bench_engines.py [--threads T]
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch

from branet_pacs.config import load_config
from branet_pacs.models.onnx_engine import OnnxFunction, compile_module
from branet_pacs.models.runtime import available_cores, configure_torch


def median_seconds(call, repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_flags() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16")
    return " ".join(f for f in wanted if f in flags) or "none of " + ", ".join(wanted)


def models() -> list[tuple[str, torch.nn.Module, list[torch.Tensor], str]]:
    """(name, module, example inputs, digest) for every model the pipeline runs."""
    from branet_pacs.models.classifier import MalignancyClassifier, _Probability
    from branet_pacs.models.detector import LesionDetector
    from branet_pacs.models.segmenter import LiteMedSAMSegmenter, _BoxDecoder, _litemedsam_digest

    config = load_config()
    segmenter = LiteMedSAMSegmenter("cpu")
    classifier = MalignancyClassifier.load(config.models_dir, "US", device="cpu")
    detector = LesionDetector.load(config.models_dir, "US", device="cpu")
    size = detector.spec.size
    return [
        ("LiteMedSAM encoder", segmenter.model.image_encoder.eval(), [torch.rand(1, 3, 256, 256)],
         _litemedsam_digest()),
        ("LiteMedSAM box decoder", _BoxDecoder(segmenter.model).eval(),
         [torch.randn(1, 256, 64, 64), torch.tensor([[40.0, 50.0, 160.0, 150.0]])], _litemedsam_digest()),
        ("US classifier (3 margins, flip)", _Probability(classifier._networks, classifier.tta).eval(),
         [torch.rand(3, 1, 128, 128) * 2 - 1], classifier.entry.sha256),
        ("US detector (flip: x2)", detector.net.eval(), [torch.rand(1, 2, size, size)], detector.sha256),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=0, help="threads (0 = all cores)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    threads = args.threads or available_cores()
    configure_torch(threads)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    print(f"CPU flags: {cpu_flags()}; {threads} thread(s); median seconds over {args.repeats} runs")
    print(f"{'model':34}{'torch':>9}{'onnx fp32':>11}{'max diff':>10}{'onnx int8':>11}{'max diff':>10}")
    with tempfile.TemporaryDirectory() as cache:
        for name, module, inputs, digest in models():
            with torch.inference_mode():
                expected = module(*inputs)
                eager = median_seconds(lambda: module(*inputs), args.repeats)
            fp32 = compile_module(module, inputs, name=re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"),
                                  digest=digest, threads=threads,
                                  cache_dir=Path(cache))
            fp32_s = median_seconds(lambda: fp32(*inputs), args.repeats)
            fp32_diff = float((fp32(*inputs) - expected).abs().max())
            int8_path = fp32.path.with_name(fp32.path.stem + "-int8.onnx")
            try:
                quantize_dynamic(str(fp32.path), str(int8_path), weight_type=QuantType.QInt8)
                int8 = OnnxFunction(int8_path, threads, 1)
                int8_text = (f"{median_seconds(lambda: int8(*inputs), args.repeats):11.3f}"
                             f"{float((int8(*inputs) - expected).abs().max()):10.1e}")
            except Exception as exc:  # noqa: BLE001 - the quantiser does not take every graph; say so, go on
                int8_text = f"  n/a ({type(exc).__name__}: {str(exc)[:40]})"
            print(f"{name:34}{eager:9.3f}{fp32_s:11.3f}{fp32_diff:10.1e}{int8_text}", flush=True)


if __name__ == "__main__":
    main()
