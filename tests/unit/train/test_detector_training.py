"""Lesion-detector training: resume, and `branet train-detector` + `branet evaluate-proposals` end to end on a tiny
BUSI-like folder (real LiteMedSAM, no ../shared)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from branet_pacs.evaluation import proposals
from branet_pacs.models.detector import LesionDetector
from branet_pacs.models.manifest import file_sha256
from branet_pacs.train import detector as detector_training
from branet_pacs.train.cards import SEGMENTATION_REPORT
from branet_pacs.train.detector import DetectorTrainSettings, train_fold
from branet_pacs.train.detector_data import build_cache

from synthetic import blob_case, blob_image, png

CHANNELS = (8, 16, 32, 64)


def test_resume_restores_the_epoch(tmp_path):
    rng = np.random.default_rng(1)
    cache = build_cache([blob_case(rng, tmp_path, f"r{i}") for i in range(6)], 32, "US")
    settings = DetectorTrainSettings(size=32, epochs=2, batch_size=4, channels=CHANNELS)
    checkpoint = tmp_path / "fold0.pt"
    first, history = train_fold(cache, np.arange(6), np.array([], dtype=int), settings, checkpoint, 0,
                                      progress=False)
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 2
    again, same = train_fold(cache, np.arange(6), np.array([], dtype=int), settings, checkpoint, 0,
                                   progress=False)
    assert same == history   # nothing left to train
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    longer = DetectorTrainSettings(size=32, epochs=3, batch_size=4, channels=CHANNELS)
    _, extended = train_fold(cache, np.arange(6), np.array([], dtype=int), longer, checkpoint, 0,
                                   progress=False)
    assert [h["epoch"] for h in extended] == [1, 2, 3] and extended[:2] == history
    _, fresh = train_fold(cache, np.arange(6), np.array([], dtype=int), longer, tmp_path / "new.pt", 0,
                                resume=False, progress=False)
    assert [h["epoch"] for h in fresh] == [1, 2, 3]


def test_train_detector_command_writes_model_metrics_card_and_manifest(tmp_path):
    rng = np.random.default_rng(4)
    src = _blob_dataset(tmp_path / "busi", rng, n=9)
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    detector_training.register(subparsers)
    proposals.register(subparsers)
    out = tmp_path / "models" / "us-det"
    argv = ["train-detector", "--data", "busi", str(src), "--modality", "us", "--out", str(out), "--folds", "3",
            "--epochs", "1", "--size", "32", "--batch-size", "4", "--quiet", "--work", str(tmp_path / "work")]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 9 and metrics["cross_validation"]["folds"] == 3
    assert {m["min_score"] for m in metrics["out_of_fold"]["by_min_score"]} == set(detector_training.SCORE_SWEEP)
    assert "Research use only" in (out / "MODEL_CARD.md").read_text()
    assert (out / "training_curves.png").is_file()
    detector = LesionDetector.load(tmp_path / "models", "US", device="cpu")
    assert len(detector.net.members) == 3 and detector.spec.size == 32
    assert isinstance(detector.propose(np.random.default_rng(0).random((50, 60)).astype(np.float32),
                                       min_score=0.0), list)
    # LiteMedSAM on the out-of-fold top proposals vs the true boxes (real segmenter, one image)
    report_path = out / SEGMENTATION_REPORT
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


def _blob_dataset(folder, rng, n=6, patients=False):
    """A BUSI-layout folder of blob images (benign, malignant, normal in turn); with `patients`, BUS-UCLM names
    (patient prefix) and an info.csv."""
    rows = ["file,patient,label,doppler,calipers,combined"]
    for i in range(n):
        category = ("benign", "malignant", "normal")[i % 3]
        pixels, disk = blob_image(rng, lesion=category != "normal")
        name = f"P{i // 2:03d}_{i:03d}" if patients else f"{category} ({i})"
        png(folder / category / f"{name}.png", pixels)
        mask = disk if disk is not None else np.zeros(pixels.shape, bool)
        png(folder / category / "masks" / f"{name}_mask.png", mask.astype(np.uint8) * 255)
        rows.append(f"{category}/{name}.png,P{i // 2:03d},{category},False,False,False")
    if patients:
        (folder / "info.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_two_sites_train_one_detector_and_leave_one_site_out(tmp_path):
    rng = np.random.default_rng(7)
    busi, uclm = _blob_dataset(tmp_path / "busi", rng), _blob_dataset(tmp_path / "uclm", rng, patients=True)
    parser = argparse.ArgumentParser()
    detector_training.register(parser.add_subparsers())
    common = ["--modality", "us", "--folds", "2", "--epochs", "1", "--size", "32", "--batch-size", "4", "--quiet"]
    data = ["--data", "busi", str(busi), "--data", "bus-uclm", str(uclm)]
    out = tmp_path / "models" / "us-det"
    args = parser.parse_args(["train-detector", *data, "--out", str(out), "--work", str(tmp_path / "w1"), *common])
    assert args.func(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "busi+bus-uclm" and metrics["images"] == 12
    assert set(metrics["out_of_fold_by_site"]) == {"busi", "bus-uclm"}
    assert "Site by site" in (out / "MODEL_CARD.md").read_text()

    loso = tmp_path / "loso"
    args = parser.parse_args(["train-detector", *data, "--out", str(loso), "--work", str(tmp_path / "w2"),
                              "--validate-by", "site", *common])
    assert args.func(args) == 0
    report = json.loads((loso / "leave-one-site-out.json").read_text())
    assert report["held_out"]["busi"]["trained_on"] == ["bus-uclm"] and report["held_out"]["busi"]["images"] == 6
    for site in ("busi", "bus-uclm"):
        assert LesionDetector.load(loso, "US", device="cpu", name=f"without-{site}").version == f"without-{site}"
