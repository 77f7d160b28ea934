"""What the pipeline-eval research scripts share: where the records are, and the development datasets' cases."""

from __future__ import annotations

import glob
import json
from pathlib import Path

from branet_pacs.datasets.cases import Case
from branet_pacs.datasets.readers import read_dataset
from branet_pacs.evaluation.images import roi_key

SHARED = Path("../shared/data")
US_RECORDS = ("var/exp/usj25-0.jsonl", "var/exp/usj25-1.jsonl")   # explore.py output for us-resnet18 (j25 recipe)
US_FOLDS = "var/train/us-resnet18-j25"                              # that classifier's fold checkpoints


def cases(dataset: str) -> list[Case]:
    """The development images the shipped models were trained and evaluated on (every lesion traced)."""
    return [c for c in read_dataset(dataset, SHARED / dataset) if c.complete]


def read_records(paths) -> dict[str, dict]:
    """JSONL records keyed by image name."""
    return {r["name"]: r for path in paths for line in open(path) for r in [json.loads(line)]}


def fold_of_images(model_dir: str) -> dict[str, int]:
    """Image key -> the classifier fold that validated it (from `branet train` checkpoints)."""
    folds = {}
    for k, done in enumerate(sorted(glob.glob(f"{model_dir}/checkpoints/fold*/done.json"))):
        for f in json.load(open(done))["val_files"]:
            folds[roi_key(f)] = k
    return folds
