"""Lesion detector: candidate extraction with known answers, letterbox geometry, training on synthetic blobs,
weights + manifest loading, resume, the MIAS/BUSI readers and the train-detector command (all tiny, no ../shared)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from branet_pacs.imaging.geometry import box_iou
from branet_pacs.models.detector import (DetectorSpec, LesionDetector, Proposal, TinyUNet, heatmap_to_proposals,
                                         letterbox, model_heatmap_to_image, save_weights)
from branet_pacs.models.errors import ModelUnavailable
from branet_pacs.models.manifest import ModelEntry, file_sha256, register_model
from branet_pacs.train import detector as train

CHANNELS = (8, 16, 32, 64)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --- candidate extraction ---------------------------------------------------------------------------------------


def _two_blob_heatmap() -> np.ndarray:
    heat = np.full((64, 80), 0.02, dtype=np.float32)
    heat[10:20, 30:50] = 0.9      # strong lesion: box (30, 10, 50, 20)
    heat[40:44, 5:9] = 0.6        # weaker lesion: box (5, 40, 9, 44)
    heat[50, 60] = 0.95           # a single hot pixel: smaller than min_area
    return heat


def test_heatmap_to_proposals_known_boxes_and_order():
    proposals = heatmap_to_proposals(_two_blob_heatmap(), max_proposals=3, min_score=0.5, min_area=4, expand=0.0)
    assert proposals == [Proposal(box=(30, 10, 50, 20), score=pytest.approx(0.9)),
                         Proposal(box=(5, 40, 9, 44), score=pytest.approx(0.6))]


def test_heatmap_to_proposals_min_score_max_proposals_and_valid_mask():
    heat = _two_blob_heatmap()
    assert [p.box for p in heatmap_to_proposals(heat, min_score=0.7, expand=0.0)] == [(30, 10, 50, 20)]
    assert [p.box for p in heatmap_to_proposals(heat, max_proposals=1, min_score=0.5, expand=0.0)] == [(30, 10, 50, 20)]
    valid = np.ones_like(heat, dtype=bool)
    valid[:, 25:] = False          # the strong blob lies outside the valid region
    assert [p.box for p in heatmap_to_proposals(heat, valid, min_score=0.5, expand=0.0)] == [(5, 40, 9, 44)]
    assert heatmap_to_proposals(np.zeros((16, 16), np.float32), min_score=0.5) == []


def test_region_is_half_maximum_contour_and_expand_grows_box():
    yy, xx = np.mgrid[:100, :100]
    heat = np.exp(-((yy - 50) ** 2 + (xx - 40) ** 2) / (2 * 8.0 ** 2)).astype(np.float32) * 0.8
    (p,) = heatmap_to_proposals(heat, min_score=0.5, region_level=0.5, expand=0.0)
    # half maximum of a Gaussian lies at sigma * sqrt(2 ln 2) = 9.42 px from the centre
    assert p.box == (31, 41, 50, 60)
    (grown,) = heatmap_to_proposals(heat, min_score=0.5, region_level=0.5, expand=0.1)
    assert grown.box[0] < p.box[0] and grown.box[2] > p.box[2] and grown.box[1] < p.box[1]


def test_overlapping_peaks_are_suppressed():
    heat = np.zeros((40, 40), dtype=np.float32)
    heat[10:30, 10:30] = 0.6
    heat[15, 15] = 0.9             # two peaks in one region -> one proposal
    assert len(heatmap_to_proposals(heat, min_score=0.5, min_area=1)) == 1


# --- letterbox geometry ------------------------------------------------------------------------------------------


def test_letterbox_maps_boxes_back_to_the_image():
    image = np.full((300, 200), 0.3, dtype=np.float32)
    image[120:180, 40:100] = 0.9
    inputs, geo = letterbox(image, None, 64)
    assert inputs.shape == (2, 64, 64) and inputs.dtype == np.float32
    assert geo.scale == pytest.approx(64 / 300)
    assert inputs[1].sum() == pytest.approx(64 * round(200 * 64 / 300), abs=64)   # valid channel = the image
    rows, cols = np.nonzero(inputs[0] > 0.5)
    model_box = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    back = geo.to_image(model_box, image.shape)
    assert box_iou(back, (40, 120, 100, 180)) > 0.85
    heat = np.zeros((64, 64), np.float32)
    heat[rows, cols] = 1.0
    full = model_heatmap_to_image(heat, geo, image.shape)
    assert full.shape == image.shape and full[150, 70] > 0.9 and full[20, 20] == 0.0


def test_letterbox_crops_to_the_valid_mask_and_zeroes_outside():
    image = np.random.default_rng(0).random((120, 160)).astype(np.float32)
    valid = np.zeros_like(image, dtype=bool)
    valid[20:100, 10:90] = True
    valid[20:40, 10:30] = False
    inputs, geo = letterbox(image, valid, 32)
    assert geo.crop == (10, 20, 90, 100)
    assert inputs[0][inputs[1] == 0].max() == 0.0
    assert 0.0 <= inputs[0].min() and inputs[0].max() <= 1.0


# --- training on synthetic blobs -----------------------------------------------------------------------------------


def _blob_case(rng: np.random.Generator, name: str, lesion: bool = True) -> train.Case:
    """Speckle-like background with one dark disk (a hypoechoic 'lesion') unless `lesion` is False."""
    h, w = int(rng.integers(70, 110)), int(rng.integers(70, 110))
    image = ndimage.gaussian_filter(rng.normal(0.5, 0.15, (h, w)), 1.5).astype(np.float32)
    lesions: tuple[np.ndarray, ...] = ()
    if lesion:
        r = int(rng.integers(7, 13))
        cy, cx = int(rng.integers(r + 2, h - r - 2)), int(rng.integers(r + 2, w - r - 2))
        yy, xx = np.ogrid[:h, :w]
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        image[disk] = 0.08 + 0.03 * rng.random(int(disk.sum()))
        lesions = (disk,)
    return train.Case(name=name, group=name, category="benign" if lesion else "normal",
                      image=np.clip(image, 0, 1), lesions=lesions)


SETTINGS = train.TrainSettings(size=64, epochs=14, batch_size=8, lr=5e-3, channels=CHANNELS, val_every=100)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    cases = [_blob_case(rng, f"c{i}", lesion=i % 4 != 0) for i in range(24)]
    cache = train.build_cache(iter(cases), SETTINGS.size)
    checkpoint = tmp_path_factory.mktemp("fold") / "fold0.pt"
    net, history = train.train_fold(cache, np.arange(len(cases)), np.array([], dtype=int), SETTINGS, checkpoint,
                                    fold=0, progress=False)
    return net, history, checkpoint, cache


def test_training_loss_falls(trained):
    _, history, _, _ = trained
    losses = [h["train_loss"] for h in history]
    assert len(losses) == SETTINGS.epochs
    assert np.mean(losses[-3:]) < 0.75 * np.mean(losses[:2])


def test_trained_detector_finds_an_unseen_blob(trained, tmp_path):
    net, _, _, _ = trained
    spec = DetectorSpec(size=SETTINGS.size, channels=CHANNELS)
    weights = save_weights(tmp_path / "det" / "weights.safetensors", [net], spec)
    detector = LesionDetector.from_weights(weights, name="det", version="0", modality="US")
    hits = 0
    for seed in range(100, 106):
        case = _blob_case(np.random.default_rng(seed), "test")
        proposals = detector.propose(case.image, max_proposals=3, min_score=0.0)
        truth = ndimage.find_objects(case.lesions[0].astype(int))[0]
        truth_box = (truth[1].start, truth[0].start, truth[1].stop, truth[0].stop)
        hits += bool(proposals) and box_iou(proposals[0].box, truth_box) >= 0.5
        heat = detector.heatmap(case.image)
        assert heat.shape == case.image.shape and heat.dtype == np.float32
    assert hits >= 5
    empty = _blob_case(np.random.default_rng(7), "normal", lesion=False)
    assert all(p.score < 0.9 for p in detector.propose(empty.image, min_score=0.0))


def test_weights_round_trip_through_the_manifest(trained, tmp_path):
    net, _, _, cache = trained
    spec = DetectorSpec(size=SETTINGS.size, channels=CHANNELS, region_level=0.4)
    weights = save_weights(tmp_path / "us-det" / "weights.safetensors", [net, net], spec)
    register_model(tmp_path, ModelEntry(name="us-det", kind="detector", modality="US", version="1.2.3",
                                        file="us-det/weights.safetensors", sha256=file_sha256(weights)))
    detector = LesionDetector.load(tmp_path, "us", device="cpu")
    assert (detector.name, detector.version, detector.modality) == ("us-det", "1.2.3", "US")
    assert detector.spec == spec and len(detector.net.members) == 2
    reference = train.predict_heatmaps([net], cache.inputs[:4])
    assert np.abs(detector.model_heatmap(cache.inputs[:4].astype(np.float32)) - reference).max() < 0.02  # fp16


def test_load_without_weights_raises_model_unavailable(tmp_path):
    with pytest.raises(ModelUnavailable):
        LesionDetector.load(tmp_path, "US")                       # no manifest at all
    register_model(tmp_path, ModelEntry(name="us-det", kind="detector", modality="US", version="1",
                                        file="us-det/weights.safetensors", sha256="0" * 64))
    with pytest.raises(ModelUnavailable):
        LesionDetector.load(tmp_path, "US")                       # listed, file missing
    with pytest.raises(ModelUnavailable):
        LesionDetector.load(tmp_path, "MG")                       # no detector for the modality
    weights = save_weights(tmp_path / "us-det" / "weights.safetensors", [TinyUNet(CHANNELS)],
                           DetectorSpec(size=64, channels=CHANNELS))
    with pytest.raises(ModelUnavailable, match="SHA-256"):
        LesionDetector.load(tmp_path, "US")                       # file differs from the manifest
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelUnavailable):
        LesionDetector.from_weights(tmp_path / "junk.safetensors", name="x", version="1", modality="US")
    assert weights.is_file()


def test_resume_restores_the_epoch(tmp_path):
    rng = np.random.default_rng(1)
    cache = train.build_cache(iter([_blob_case(rng, f"r{i}") for i in range(6)]), 32)
    settings = train.TrainSettings(size=32, epochs=2, batch_size=4, channels=CHANNELS)
    checkpoint = tmp_path / "fold0.pt"
    first, history = train.train_fold(cache, np.arange(6), np.array([], dtype=int), settings, checkpoint, 0,
                                      progress=False)
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 2
    again, same = train.train_fold(cache, np.arange(6), np.array([], dtype=int), settings, checkpoint, 0,
                                   progress=False)
    assert same == history   # nothing left to train
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    longer = train.TrainSettings(size=32, epochs=3, batch_size=4, channels=CHANNELS)
    _, extended = train.train_fold(cache, np.arange(6), np.array([], dtype=int), longer, checkpoint, 0,
                                   progress=False)
    assert [h["epoch"] for h in extended] == [1, 2, 3] and extended[:2] == history
    _, fresh = train.train_fold(cache, np.arange(6), np.array([], dtype=int), longer, tmp_path / "new.pt", 0,
                                resume=False, progress=False)
    assert [h["epoch"] for h in fresh] == [1, 2, 3]


# --- metrics -----------------------------------------------------------------------------------------------------


def test_proposal_metrics_on_perfect_and_empty_heatmaps():
    rng = np.random.default_rng(2)
    cases = [_blob_case(rng, f"m{i}", lesion=i < 4) for i in range(6)]
    cache = train.build_cache(iter(cases), 64)
    heatmaps = {i: (cache.targets[i] >= 0.5).astype(np.float32) * 0.95 for i in range(len(cases))}
    spec = DetectorSpec(size=64, channels=CHANNELS, expand=0.0)
    metrics = train.proposal_metrics(cache, heatmaps, spec, min_score=0.5)
    assert metrics["lesion"]["hit_rate_iou50"] == 1.0 and metrics["lesion"]["no_proposal_fraction"] == 0.0
    assert metrics["lesion"]["false_proposals_per_lesion_image"] == 0.0
    assert metrics["normal"]["false_proposals_per_normal_image"] == 0.0
    shifted = {i: np.roll(h, 20, axis=1) for i, h in heatmaps.items()}   # every box misses by 20 model px
    assert train.proposal_metrics(cache, shifted, spec, min_score=0.5)["lesion"]["hit_rate_iou50"] < 0.5
    assert train.heatmap_dice(cache, heatmaps)["mean"] == pytest.approx(1.0)


def test_folds_are_stratified_and_grouped():
    rng = np.random.default_rng(3)
    cases = [train.Case(name=f"mdb{i:03d}", group=train.mias_patient(f"mdb{i:03d}"),
                        category="normal" if i % 3 else "benign", image=rng.random((16, 16)).astype(np.float32),
                        lesions=() if i % 3 else (np.eye(16, dtype=bool),)) for i in range(1, 25)]
    cache = train.build_cache(iter(cases), 16)
    folds = train.make_folds(cache, 3, seed=0, grouped=True)
    seen = np.concatenate([v for _, v in folds])
    assert sorted(seen.tolist()) == list(range(len(cases)))
    for train_idx, val_idx in folds:
        assert not set(cache.groups[train_idx]) & set(cache.groups[val_idx])


# --- dataset readers ------------------------------------------------------------------------------------------------


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_mias_reader_flips_y_skips_films_without_centre_and_groups_patients(tmp_path):
    (tmp_path / "Info.txt").write_text(
        "# comment\nmdb001 G CIRC B 20 100 6\nmdb001 G CIRC M 100 30 4\nmdb002 F NORM\nmdb003 D CALC M\n")
    for name in ("mdb001", "mdb002", "mdb003"):
        film = np.zeros((128, 128), np.uint8)
        film[:, :96] = 140        # the breast: a bright band on the left
        _png(tmp_path / f"{name}.png", film)
    cases = list(train.iter_mias(tmp_path))
    assert [c.name for c in cases] == ["mdb001", "mdb002"]
    assert train.mias_excluded(tmp_path) == ["mdb003"]
    first = cases[0]
    assert first.category == "malignant" and len(first.lesions) == 2
    rows, cols = np.nonzero(first.lesions[0])
    assert (rows.mean(), cols.mean()) == pytest.approx((128 - 100, 20), abs=0.5)   # row = height - Y
    assert cases[1].category == "normal" and cases[1].lesions == ()
    assert first.group == cases[1].group == "p001" and train.mias_patient("mdb003") == "p002"
    assert first.valid is not None and first.valid[:, :90].all() and not first.valid[:, 100:].any()


def test_busi_reader_keeps_every_mask_and_normal_images(tmp_path):
    image = np.full((40, 50), 100, np.uint8)
    mask_a = np.zeros((40, 50), np.uint8)
    mask_a[5:10, 5:12] = 255
    mask_b = np.zeros((40, 50), np.uint8)
    mask_b[20:30, 30:45] = 255
    _png(tmp_path / "benign" / "benign (1).png", image)
    _png(tmp_path / "benign" / "masks" / "benign (1)_mask.png", mask_a)
    _png(tmp_path / "benign" / "masks" / "benign (1)_mask_1.png", mask_b)
    _png(tmp_path / "normal" / "normal (1).png", image)
    _png(tmp_path / "normal" / "masks" / "normal (1)_mask.png", np.zeros((40, 50), np.uint8))
    cases = list(train.iter_busi(tmp_path))
    assert [(c.name, c.category, len(c.lesions)) for c in cases] == [
        ("benign/benign (1)", "benign", 2), ("normal/normal (1)", "normal", 0)]
    cache = train.build_cache(iter(cases), 32)
    assert cache.gt_boxes(0) == [(5, 5, 12, 10), (30, 20, 45, 30)] and cache.gt_boxes(1) == []


# --- the command ----------------------------------------------------------------------------------------------------


def test_train_detector_command_writes_model_metrics_card_and_manifest(tmp_path):
    rng = np.random.default_rng(4)
    src = tmp_path / "busi"
    for i in range(9):
        category = ("benign", "malignant", "normal")[i % 3]
        case = _blob_case(rng, str(i), lesion=category != "normal")
        name = f"{category} ({i})"
        _png(src / category / f"{name}.png", (case.image * 255).astype(np.uint8))
        mask = case.lesions[0] if case.lesions else np.zeros(case.image.shape, bool)
        _png(src / category / "masks" / f"{name}_mask.png", mask.astype(np.uint8) * 255)
    parser = argparse.ArgumentParser()
    train.register(parser.add_subparsers())
    out = tmp_path / "models" / "us-det"
    argv = ["train-detector", "--data", "busi", str(src), "--modality", "us", "--out", str(out), "--folds", "3",
            "--epochs", "1", "--size", "32", "--batch-size", "4", "--quiet", "--work", str(tmp_path / "work")]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 9 and metrics["cross_validation"]["folds"] == 3
    assert {m["min_score"] for m in metrics["out_of_fold"]["by_min_score"]} == set(train.SCORE_SWEEP)
    assert "Research use only" in (out / "MODEL_CARD.md").read_text()
    assert (out / "training_curves.png").is_file()
    detector = LesionDetector.load(tmp_path / "models", "US", device="cpu")
    assert len(detector.net.members) == 3 and detector.spec.size == 32
    assert isinstance(detector.propose(np.random.default_rng(0).random((50, 60)).astype(np.float32),
                                       min_score=0.0), list)
    # LiteMedSAM on the out-of-fold top proposals vs the true boxes (real segmenter, one image)
    report_path = out / train.SEGMENTATION_REPORT
    args = parser.parse_args(["evaluate-proposals", "--data", "busi", str(src), "--work", str(tmp_path / "work"),
                              "--out", str(report_path), "--limit", "1", "--threads", "1", "--device", "cpu"])
    assert args.func(args) == 0
    report = json.loads(report_path.read_text())
    assert report["images"] == 1 and report["sampled_from"] == 6 and len(report["rows"]) == 1
    assert all(0.0 <= row["dice_true_box"] <= 1.0 and 0.0 <= row["dice_top"] <= 1.0 for row in report["rows"])
    assert report["dice_true_box_mean"] > 0.3   # a dark disk on texture is easy for LiteMedSAM given its box
    # a second run with --resume reuses the finished folds (no retraining), gives the same weights and puts the
    # segmentation report into the card
    digest = file_sha256(out / "weights.safetensors")
    args = parser.parse_args(argv + ["--resume"])
    assert args.func(args) == 0
    assert file_sha256(out / "weights.safetensors") == digest
    assert "LiteMedSAM on 1 lesion images" in (out / "MODEL_CARD.md").read_text()
