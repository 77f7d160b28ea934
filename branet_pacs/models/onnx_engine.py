"""ONNX Runtime as the inference engine of the shipped models on CPU.

A model's torch module is exported to ONNX once (from the shipped weights, on first use or `branet models export`),
checked against eager PyTorch on an example input, and cached under `engine_cache` with a SHA-256 sidecar; later
processes load the cached file after verifying that checksum. The exported graph is then called like the module:
torch tensors in, torch tensors out, so the code around a model does not change with the engine.

Why ONNX Runtime, and why fp32 only: `benchmarks/bench_engines.py` (LiteMedSAM's encoder, 2 threads, AVX2 CPU):
eager 1.9 s, ONNX Runtime 0.96 s, OpenVINO 0.91 s (same outputs to 3e-6); int8 (dynamic, or static QDQ with
calibration on breast ultrasound) was slower on a CPU without VNNI and changed the embedding by 75-87 % of its
magnitude, so it is not offered. OpenVINO was within 5 % of ONNX Runtime, which also has a CUDA provider and a smaller
footprint; one engine is kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from branet_pacs.models.runtime import Engine

log = logging.getLogger(__name__)

EXPORT_FORMAT = 1            # bump when the export procedure changes: every cached graph is then made again
OPSET = 17
TOLERANCE = 1e-3             # largest |ONNX - eager| on the example input, relative to the output's scale

_sessions: dict[tuple[str, int], object] = {}
_lock = threading.Lock()


def default_cache_dir() -> Path:
    """$BRANET_ENGINE_CACHE, else $XDG_CACHE_HOME/branet-pacs/onnx, else ~/.cache/branet-pacs/onnx."""
    if os.environ.get("BRANET_ENGINE_CACHE"):
        return Path(os.environ["BRANET_ENGINE_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "branet-pacs" / "onnx"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    import onnxruntime

    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "format": str(EXPORT_FORMAT)}


class OnnxFunction:
    """An exported graph run by ONNX Runtime on the CPU; called with torch tensors like the module it came from."""

    def __init__(self, path: Path, threads: int, output_count: int) -> None:
        self.path = path
        self.session = _session(path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_count = output_count

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        feeds = {name: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
                 for name, x in zip(self.input_names, inputs)}
        outputs = [torch.from_numpy(o) for o in self.session.run(None, feeds)]
        return outputs[0] if self.output_count == 1 else tuple(outputs)


def _session(path: Path, threads: int):
    import onnxruntime as ort

    key = (str(path), threads)
    with _lock:
        if key not in _sessions:
            options = ort.SessionOptions()
            options.intra_op_num_threads = max(1, threads)
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3   # errors only: the optimiser's notes are not for an operator's log
            # no arena: it keeps the encoder's peak activations (~400 MiB) for the life of the worker; measured
            # cost of allocating per run is within the noise of this machine (benchmarks/bench_engines.py)
            options.enable_cpu_mem_arena = False
            _sessions[key] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return _sessions[key]


def compile_module(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor], *, name: str, digest: str,
                   threads: int, cache_dir: Path, dynamic: Sequence[int] = (),
                   output_count: int = 1) -> OnnxFunction:
    """`module` (eval mode, CPU) as an OnnxFunction: the cached export when its checksum holds, else a new export,
    verified against eager PyTorch on `example_inputs` before it is used or cached.

    `digest` identifies the weights (e.g. the manifest's sha256): another model never reuses this graph.
    `dynamic`: positions of the inputs whose first dimension may vary (ROIs, prompts); the outputs' first
    dimension then varies too."""
    shapes = [list(x.shape) for x in example_inputs]
    key = hashlib.sha256(json.dumps({"name": name, "digest": digest, "shapes": shapes, "dynamic": list(dynamic),
                                     **_versions()}, sort_keys=True).encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"{name}-{key}.onnx"
    sidecar = path.with_suffix(".json")
    if path.is_file() and sidecar.is_file():
        recorded = json.loads(sidecar.read_text()).get("sha256")
        if recorded == _file_sha256(path):
            return OnnxFunction(path, threads, output_count)
        log.warning("%s fails its SHA-256 check: exporting it again", path)
    _export(module, example_inputs, path, dynamic, output_count)
    function = OnnxFunction(path, threads, output_count)
    _check_against_eager(module, function, example_inputs, name)
    sidecar.write_text(json.dumps({"name": name, "weights": digest, "sha256": _file_sha256(path), "shapes": shapes,
                                   **_versions()}, indent=1) + "\n")
    log.info("exported %s to %s", name, path)
    return function


def _export(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor], path: Path, dynamic: Sequence[int],
            output_count: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = [f"input{i}" for i in range(len(example_inputs))]
    outputs = [f"output{i}" for i in range(output_count)]
    axes = {**{inputs[i]: {0: "batch"} for i in dynamic}, **{n: {0: "batch"} for n in outputs}} if dynamic else None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")   # the exporter's deprecation and tracer notes
        torch.onnx.export(module, tuple(example_inputs), str(tmp), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    tmp.replace(path)   # atomic: a concurrent process sees the old file or the whole new one


def _check_against_eager(module: torch.nn.Module, function: OnnxFunction, example_inputs: Sequence[torch.Tensor],
                         name: str) -> None:
    with torch.inference_mode():
        expected = module(*example_inputs)
    got = function(*example_inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = got if isinstance(got, tuple) else (got,)
    for e, g in zip(expected, got):
        scale = max(1.0, float(e.abs().max()))
        error = float((e.float() - g.float()).abs().max())
        if error > TOLERANCE * scale:
            function.path.unlink(missing_ok=True)
            raise RuntimeError(f"{name}: the ONNX export differs from PyTorch by {error:.2e}; not used")


def compiled_or_module(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor], *, engine: Engine, name: str,
                       digest: str, device: torch.device, dynamic: Sequence[int] = (),
                       output_count: int = 1) -> Callable[..., object]:
    """What a model calls for its forward pass: the ONNX graph with engine "onnx" on the CPU, else the module
    itself (engine "torch", or a CUDA device, where eager PyTorch runs on the GPU). An export that fails or does not
    match eager PyTorch falls back to the module, with a warning naming why."""
    if engine.name == "torch" or device.type != "cpu":
        return module
    try:
        return compile_module(module.eval(), example_inputs, name=name, digest=digest, threads=engine.threads,
                              cache_dir=Path(engine.cache_dir) if engine.cache_dir else default_cache_dir(),
                              dynamic=dynamic, output_count=output_count)
    except Exception as exc:  # noqa: BLE001 - eager PyTorch gives the same answers, only slower
        log.warning("%s: ONNX Runtime unavailable (%s: %s); using PyTorch", name, type(exc).__name__, exc)
        return module
