"""Shared test set-up: the support code on sys.path, the engine cache, one torch thread per test unless a module
asks for more.

Layout: tests/unit/<package>/ mirrors branet_pacs/<package>/; tests/integration/ starts real servers (Orthanc,
dcmtk peers) and runs the real validators end to end; tests/support/ holds the DICOM factory, the server harnesses
and the validator wrappers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

# Exported ONNX graphs of the test run (and of the Orthanc workers the tests start, which inherit the environment)
# stay in the checkout, not in the user's cache; kept between runs like the user's cache is.
os.environ.setdefault("BRANET_ENGINE_CACHE", str(Path(__file__).resolve().parent.parent / "var" / "test-engine-cache"))


@pytest.fixture(autouse=True)
def torch_threads(request):
    """Each test runs with `TORCH_THREADS` (module attribute, default 1) torch threads, restored afterwards:
    on a 2-core machine a second thread only pays where a test runs one large model."""
    if "torch" not in sys.modules:   # tests that never touch torch do not pay for importing it
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(getattr(request.module, "TORCH_THREADS", 1))
    yield
    torch.set_num_threads(before)

# tests/netns/ needs a private network namespace: tests/integration/test_reanalyze_ray.py runs it in one
collect_ignore = [] if os.environ.get("BRANET_NETNS") == "1" else ["netns"]
