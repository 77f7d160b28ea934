"""The dataset readers and the fold splitter on small constructed datasets (no ../shared)."""

from __future__ import annotations

import numpy as np
import pytest

from branet_pacs.datasets.busi import read_busi
from branet_pacs.datasets.folds import make_folds
from branet_pacs.datasets.mias import patient, read_mias
from branet_pacs.imaging.breast import detection_region
from branet_pacs.train.detector_data import build_cache, training_cases

from synthetic import png


def test_mias_reader_flips_y_keeps_lesions_with_a_centre_and_groups_patients(tmp_path):
    (tmp_path / "Info.txt").write_text(
        "# comment\nmdb001 G CIRC B 20 100 6\nmdb001 G CIRC M 100 30 4\nmdb002 F NORM\nmdb003 D CALC M\n")
    for name in ("mdb001", "mdb002", "mdb003"):
        film = np.zeros((128, 128), np.uint8)
        film[:, :96] = 140        # the breast: a bright band on the left
        png(tmp_path / f"{name}.png", film)
    cases = list(read_mias(tmp_path))
    assert [c.name for c in cases] == ["mdb001", "mdb002", "mdb003"]
    assert [c.complete for c in cases] == [True, True, False]
    assert cases[2].notes == ("mdb003 CALC M: no centre given",) and cases[2].category == "malignant"
    first = cases[0]
    assert first.category == "malignant" and [lesion.label for lesion in first.lesions] == ["benign", "malignant"]
    rows, cols = np.nonzero(first.lesions[0].mask)
    assert (rows.mean(), cols.mean()) == pytest.approx((128 - 100, 20), abs=0.5)   # row = height - Y
    assert first.lesions[0].box == (14, 22, 26, 34) and not first.lesions[0].traced
    assert cases[1].category == "normal" and cases[1].lesions == ()
    assert first.group == cases[1].group == "patient001" and patient("mdb003") == "patient002"
    valid = detection_region(first.pixels(), "MG")
    assert valid[:, :90].all() and not valid[:, 100:].any()
    assert [c.name for c in training_cases(cases)] == ["mdb001", "mdb002"]
    wide = next(iter(read_mias(tmp_path, min_radius=24)))
    assert wide.lesions[0].box == (-4, 4, 44, 52)


def test_busi_reader_keeps_every_mask_normal_images_and_duplicate_groups(tmp_path):
    image = np.full((40, 50), 100, np.uint8)
    mask_a = np.zeros((40, 50), np.uint8)
    mask_a[5:10, 5:12] = 255
    mask_b = np.zeros((40, 50), np.uint8)
    mask_b[20:30, 30:45] = 255
    png(tmp_path / "benign" / "benign (1).png", image)
    png(tmp_path / "benign" / "masks" / "benign (1)_mask.png", mask_a)
    png(tmp_path / "benign" / "masks" / "benign (1)_mask_1.png", mask_b)
    png(tmp_path / "benign" / "benign (2).png", image + 1)           # no mask: kept, said, left out of training
    png(tmp_path / "malignant" / "malignant (10).png", image)        # the same pixels as benign (1)
    png(tmp_path / "malignant" / "masks" / "malignant (10)_mask.png", mask_a)
    png(tmp_path / "normal" / "normal (1).png", image + 2)
    png(tmp_path / "normal" / "masks" / "normal (1)_mask.png", np.zeros((40, 50), np.uint8))
    cases = list(read_busi(tmp_path))
    assert [(c.name, c.category, len(c.lesions), c.complete) for c in cases] == [
        ("benign/benign (1)", "benign", 2, True), ("benign/benign (2)", "benign", 0, False),
        ("malignant/malignant (10)", "malignant", 1, True), ("normal/normal (1)", "normal", 0, True)]
    assert cases[0].group == cases[2].group == "benign (1)", "identical images share a group"
    assert cases[1].notes == ("benign/benign (2).png: no mask file",)
    cache = build_cache(training_cases(cases), 32, "US")
    assert cache.gt_boxes(0) == [(5, 5, 12, 10), (30, 20, 45, 30)] and cache.gt_boxes(2) == []
    assert list(cache.groups) == ["benign (1)", "benign (1)", "normal (1)"]
    assert [c.name for c in read_busi(tmp_path, include_normal=False)][-1] == "malignant/malignant (10)"


def test_folds_are_stratified_and_grouped():
    labels = ["normal" if i % 3 else "benign" for i in range(1, 25)]
    groups = [patient(f"mdb{i:03d}") for i in range(1, 25)]
    folds = make_folds(labels, groups, 3, seed=0)
    seen = np.concatenate([v for _, v in folds])
    assert sorted(seen.tolist()) == list(range(len(labels)))
    groups = np.array(groups)
    for train_idx, val_idx in folds:
        assert not set(groups[train_idx]) & set(groups[val_idx])
    ungrouped = make_folds(labels, None, 3, seed=0)
    assert sorted(np.concatenate([v for _, v in ungrouped]).tolist()) == list(range(len(labels)))
