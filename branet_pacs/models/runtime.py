"""Runtime settings shared by every model: thread counts, device choice and the inference engine."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import torch

_lock = threading.Lock()
_interop_set = False

ENGINES = ("onnx", "torch")


@dataclass(frozen=True)
class Engine:
    """How a model's forward pass runs on the CPU: "onnx" (ONNX Runtime, graphs exported once from the shipped
    weights, `models.onnx_engine`) or "torch" (eager PyTorch; training, CUDA and the reference for the other)."""

    name: str = "torch"
    threads: int = 1
    cache_dir: str = ""          # exported graphs; "" = onnx_engine.default_cache_dir()

    def __post_init__(self) -> None:
        if self.name not in ENGINES:
            raise ValueError(f"unknown engine '{self.name}' (use {' or '.join(ENGINES)})")


def available_cores() -> int:
    """Cores this process may run on (CPU affinity when the platform reports it, else os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def threads_per_process(configured: int, processes: int) -> int:
    """Intra-op threads for each of `processes` model-running processes: the configured count, or with 0 the cores
    shared out (measured: on 2 cores one process with 2 threads and two with 1 thread each analyse the same number
    of images per second, and the single process halves each image's latency; benchmarks/bench_pipeline.py)."""
    return configured if configured > 0 else max(1, available_cores() // max(1, processes))


def configure_torch(threads: int = 0) -> None:
    """Set torch intra-op threads (`threads`, or all available cores when 0) and one inter-op thread.

    Safe to call repeatedly. Torch only accepts the inter-op setting before its first parallel work, so a later
    call that cannot change it leaves it as it is.
    """
    global _interop_set
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    with _lock:
        wanted = threads or available_cores()
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)
        if not _interop_set:
            try:
                if torch.get_num_interop_threads() != 1:
                    torch.set_num_interop_threads(1)
            except RuntimeError:
                pass  # inter-op pool already started by earlier torch work; nothing to gain by failing
            _interop_set = True


def select_device(preference: str = "auto") -> torch.device:
    """"auto" -> CUDA when available, else CPU; "cpu"; "cuda" / "cuda:N" (error when CUDA is absent)."""
    pref = (preference or "auto").strip().lower()
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(pref)
    except RuntimeError as exc:
        raise ValueError(f"unknown device '{preference}' (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device '{preference}' requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"device '{preference}' requested but only {torch.cuda.device_count()} GPU(s) exist")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device '{preference}' (use auto, cpu, cuda or cuda:N)")
    return device
