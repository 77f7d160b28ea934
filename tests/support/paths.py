"""Where things are, for tests and their harnesses."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples"
MODELS = REPO / "models"
