"""Every research script still imports against today's package (public names only) and has a `main` to run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from paths import REPO

SCRIPTS = sorted(p for p in (REPO / "research").rglob("*.py") if p.name != "common.py")


def test_there_are_research_scripts():
    assert len(SCRIPTS) >= 15


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO / "research")))
def test_research_script_imports(script: Path, monkeypatch):
    monkeypatch.syspath_prepend(str(script.parent))   # the scripts' own helpers (common.py, shapefeat.py ...)
    spec = importlib.util.spec_from_file_location(f"research_{script.parent.name}_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(getattr(module, "main", None)), f"{script.name} has no main(): importing it must not run it"
    text = script.read_text()
    private = [line for line in text.splitlines() if line.startswith("from branet_pacs") and " _" in line]
    assert not private, f"{script.name} imports private names: {private}"
    for name in ("common", "shapefeat", "samshape_eval"):
        sys.modules.pop(name, None)
