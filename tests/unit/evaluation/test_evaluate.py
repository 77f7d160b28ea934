"""`branet evaluate`: metrics against hand-computed values with a hand-built classifier, and segmentation Dice
with the real LiteMedSAM on a prepared BUSI-like folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from branet_pacs.datasets.prepare import prepare
from branet_pacs.evaluation.metrics import dice_iou
from branet_pacs.evaluation.rois import evaluate
from branet_pacs.models.classifier import build_resnet18, save_classifier
from branet_pacs.models.manifest import ModelEntry, file_sha256, register_model


def _brightness_classifier(models_dir: Path, name: str = "bright-us") -> Path:
    """A ResNet18 whose p(malignant) rises with ROI brightness: the stem averages the input into channel 0,
    every residual branch is zero (blocks pass channel 0 through), downsampling keeps channel 0, and the head
    scores that channel: p = sigmoid(20 * (f0 - 0.4))."""
    net = build_resnet18().eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.zero_()
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(1.0); module.bias.zero_()
                module.running_mean.zero_(); module.running_var.fill_(1.0)
        net.conv1.weight[0, 0] = 1.0 / 49
        for layer in (net.layer2, net.layer3, net.layer4):
            layer[0].downsample[0].weight[0, 0, 0, 0] = 1.0
        net.fc[1].weight.zero_(); net.fc[1].bias.zero_()
        net.fc[1].weight[1, 0] = 20.0
        net.fc[1].bias[1] = -8.0
    out = models_dir / name
    save_classifier(net, out / "weights.safetensors")
    register_model(models_dir, ModelEntry(name=name, kind="classifier", modality="US", version="1",
                                          file=f"{name}/weights.safetensors",
                                          sha256=file_sha256(out / "weights.safetensors"), threshold=0.5,
                                          input={"size": 128, "margin": 0.15}, extra={"tta": True}))
    return out


def _uniform_roi(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((128, 128), value, np.uint8)).save(path)


def test_classification_metrics_match_hand_computed(tmp_path: Path) -> None:
    model = _brightness_classifier(tmp_path / "models")
    data = tmp_path / "data"
    # brighter ROI -> higher p(malignant); 8-bit 130/150/170 fall below the 0.5 threshold, 190+ above
    for value in (130, 150, 210):
        _uniform_roi(data / "benign" / f"b{value}.png", value)
    for value in (170, 190, 230, 250):
        _uniform_roi(data / "malignant" / f"m{value}.png", value)
    report = evaluate(data, model, tmp_path / "report" / "report.json", segmentation=True, device="cpu", threads=1)
    c = report["classification"]
    # TP 190, 230, 250; FN 170; TN 130, 150; FP 210
    assert c["confusion_matrix"] == [[2, 1], [1, 3]]
    assert c["accuracy"] == pytest.approx(5 / 7)
    assert c["sensitivity"] == pytest.approx(3 / 4) and c["specificity"] == pytest.approx(2 / 3)
    assert c["precision"] == pytest.approx(3 / 4) and c["f1"] == pytest.approx(0.75)
    assert c["balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    # p_o = 5/7, p_e = (4/7)^2 + (3/7)^2 = 25/49 -> kappa = (10/49) / (24/49)
    assert c["cohen_kappa"] == pytest.approx(10 / 24)
    assert c["roc_auc"] == pytest.approx(10 / 12)        # 10 of 12 malignant-benign pairs ranked right
    with open(tmp_path / "report" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["file", "truth", "p_malignant", "predicted"]
    by_file = {r["file"]: r for r in rows}
    assert by_file["benign/b210.png"]["predicted"] == "malignant"
    assert by_file["malignant/m170.png"]["predicted"] == "benign"
    assert float(by_file["malignant/m250.png"]["p_malignant"]) > float(by_file["malignant/m230.png"]["p_malignant"])
    assert report["segmentation"] is None and not (tmp_path / "report" / "segmentation.csv").exists()
    assert json.loads((tmp_path / "report" / "report.json").read_text())["threshold"] == 0.5
    assert {"roc.png", "confusion_matrix.png"} <= set(report["figures"])


def test_dice_and_iou() -> None:
    a = np.zeros((10, 10), bool); a[:, :4] = True        # 40 px
    b = np.zeros((10, 10), bool); b[:, 2:6] = True        # 40 px, 20 shared
    assert dice_iou(a, b) == pytest.approx((0.5, 20 / 60))


def test_segmentation_dice_on_a_prepared_folder(tmp_path: Path) -> None:
    """Full-frame masks written by `branet prepare`; the source image is found through manifest + prepare.json."""
    src = tmp_path / "busi"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:160, :200]
    for label, (cy, cx, r) in (("benign", (60, 70, 22)), ("malignant", (100, 130, 28))):
        disc = np.hypot(yy - cy, xx - cx) < r
        img = rng.normal(60, 8, (160, 200)); img[disc] = 200
        (src / label / "masks").mkdir(parents=True)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(src / label / f"{label} (1).png")
        Image.fromarray(disc.astype(np.uint8) * 255).save(src / label / "masks" / f"{label} (1)_mask.png")
    data = tmp_path / "rois"
    prepare("busi", data, src=src, margin=0.15)
    model = _brightness_classifier(tmp_path / "models")
    report = evaluate(data, model, tmp_path / "eval" / "report.json", device="cpu", threads=1)
    seg = report["segmentation"]
    assert seg["n"] == 2 and seg["frames"] == ["image"]
    with open(tmp_path / "eval" / "segmentation.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["file"] for r in rows] == ["benign/benign (1)-1.png", "malignant/malignant (1)-1.png"]
    assert list(rows[0]) == ["file", "dice_box", "dice_auto"]
    assert all(float(r["dice_box"]) > 0.8 for r in rows)     # a bright disc with a tight box prompt
    assert seg["dice_box"]["mean"] > 0.8 and seg["iou_box"]["mean"] > 0.65
    assert "unavailable" in seg["detector"] and all(r["dice_auto"] == "" for r in rows)
    assert (tmp_path / "eval" / "dice.png").exists()
