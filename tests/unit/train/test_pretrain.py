"""`branet pretrain`: patches come from inside the breast, the contrastive loss rewards matching views, the backbone
it writes is what `branet train --init` starts from, bad films are recorded, resume needs the same settings."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from branet_pacs.cli import main
from branet_pacs.train import classifier as trainer
from branet_pacs.train import cards
from branet_pacs.train.pretrain import (BACKBONE_FILE, REPORT_FILE, PretrainSettings, backbone_description, nt_xent,
                                        pretrain, random_windows, two_views, view_settings)

TINY = PretrainSettings(modality="mg", patches_per_image=3, size=32, batch_size=6, steps=4, threads=1,
                        checkpoint_every=2)


def _films(root: Path, n: int = 4, broken: bool = False) -> Path:
    """A CBIS-DDSM-like folder: films with a bright half-disc breast on black, one box-marked mass each."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:160, :120]
    rows = []
    for i in range(n):
        film = 30 + 20 * rng.random((160, 120))
        film[np.hypot(yy - 80, xx) < 100] += 120
        film[np.hypot(yy - 70 - 5 * i, xx - 50) < 9] += 80
        path = root / "films" / f"P_{i:05d}_LEFT_CC.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(film.clip(0, 255).astype(np.uint8)).save(path)
        rows.append({"film": f"films/{path.name}", "patient_id": f"P_{i:05d}", "side": "LEFT", "view": "CC",
                     "label": "benign" if i % 2 else "malignant", "pathology": "", "x0": 40, "y0": 60 + 5 * i,
                     "x1": 60, "y1": 80 + 5 * i})
    if broken:
        (root / "films" / "P_99999_LEFT_CC.jpg").write_bytes(b"not a jpeg")
        rows.append(dict(rows[0], film="films/P_99999_LEFT_CC.jpg", patient_id="P_99999"))
    with open(root / "lesions.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_windows_are_centred_inside_the_region_with_sides_in_range() -> None:
    region = np.zeros((200, 100), dtype=bool)
    region[50:80, 10:30] = True
    boxes = random_windows(region, 50, (0.1, 0.3), np.random.default_rng(0))
    assert len(boxes) == 50
    for x0, y0, x1, y1 in boxes:
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        assert region[cy, cx]
        assert 10 - 2 <= x1 - x0 <= 30 + 2 and x1 - x0 == y1 - y0
    assert random_windows(np.zeros((10, 10), dtype=bool), 5, (0.1, 0.3), np.random.default_rng(0)) == []


def test_contrastive_loss_rewards_matching_views() -> None:
    torch.manual_seed(0)
    z = torch.randn(16, 8)
    same_loss, same_accuracy = nt_xent(z, z + 0.01 * torch.randn(16, 8), temperature=0.2)
    other_loss, other_accuracy = nt_xent(z, torch.randn(16, 8), temperature=0.2)
    assert same_accuracy == 1.0 and other_accuracy < 0.5
    assert float(same_loss) < float(other_loss)
    flat_loss, _ = nt_xent(z, torch.randn(16, 8), temperature=1e4)     # no preference: one partner among 31 others
    assert float(flat_loss) == pytest.approx(np.log(31), rel=1e-3)


def test_two_views_differ_and_have_the_training_size() -> None:
    patches = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (5, 128, 128), dtype=np.uint8))
    a, b = two_views(patches, view_settings("mg"), 48, torch.Generator().manual_seed(0))
    assert a.shape == b.shape == (5, 1, 48, 48)
    assert float(a.min()) >= -1.0 and float(a.max()) <= 1.0
    assert not torch.allclose(a, b)


def test_pretrain_writes_a_backbone_that_train_init_reads(tmp_path: Path) -> None:
    data = _films(tmp_path / "cbis", broken=True)
    report = pretrain([("cbis-ddsm", data)], tmp_path / "out", TINY, quiet=True)
    assert report["data"]["images"] == 4
    assert report["data"]["patches"] == 4 * (3 + 1)            # three random windows + the mass's ROI window
    assert [s["file"].endswith("P_99999_LEFT_CC.jpg") for s in report["data"]["skipped"]] == [True]
    assert report["labels_read"] is False and report["steps"] == 4 and len(report["history"]) == 2
    assert all(np.isfinite(h["loss"]) for h in report["history"])
    assert json.loads((tmp_path / "out" / REPORT_FILE).read_text())["steps"] == 4

    path = tmp_path / "out" / BACKBONE_FILE
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
        stem = handle.get_tensor("conv1.weight")
    assert "layer4.1.bn2.running_var" in keys and not any("fc" in key for key in keys)
    state = trainer.initial_state(path, dropout=0.5)
    assert torch.equal(state["conv1.weight"], stem)
    assert state["fc.1.weight"].shape == (2, 512)              # the classifier's head starts fresh
    description = backbone_description(path)                    # what a model card started from it says
    assert description == ("self-supervised SimCLR backbone: 4 steps on 16 unlabelled patches of 4 images "
                           "(cbis-ddsm), no labels read")
    assert description in cards._init_text({"init": str(path)}, description)
    from branet_pacs.models.classifier import build_resnet18, save_classifier

    save_classifier(build_resnet18(), tmp_path / "classifier.safetensors")
    assert backbone_description(tmp_path / "classifier.safetensors") is None


def test_resume_continues_and_refuses_other_settings(tmp_path: Path) -> None:
    data = _films(tmp_path / "cbis", n=2)
    first = pretrain([("cbis-ddsm", data)], tmp_path / "out", TINY, quiet=True)
    again = pretrain([("cbis-ddsm", data)], tmp_path / "out", TINY, resume=True, quiet=True)
    assert again["history"] == first["history"]               # nothing left to run: the same steps, not new ones
    with pytest.raises(ValueError, match="other settings"):
        pretrain([("cbis-ddsm", data)], tmp_path / "out", PretrainSettings(**{**TINY.__dict__, "lr": 0.1}),
                 resume=True, quiet=True)


def test_loss_falls_on_a_patch_bank_it_can_learn(tmp_path: Path) -> None:
    data = _films(tmp_path / "cbis", n=6)
    settings = PretrainSettings(**{**TINY.__dict__, "steps": 30, "batch_size": 8, "checkpoint_every": 10,
                                   "lr": 3e-3})
    history = pretrain([("cbis-ddsm", data)], tmp_path / "out", settings, quiet=True)["history"]
    assert history[-1]["loss"] < history[0]["loss"]


def test_cli_refuses_mixed_modalities_and_unknown_datasets(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["pretrain", "--data", "mias", str(tmp_path), "--data", "busi", str(tmp_path),
                 "--out", str(tmp_path / "o")]) != 0
    assert "mixes modalities" in capsys.readouterr().err
    assert main(["pretrain", "--data", "inbreast", str(tmp_path), "--out", str(tmp_path / "o")]) != 0
    assert "unknown dataset" in capsys.readouterr().err


def test_cli_says_why_a_resume_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _films(tmp_path / "cbis", n=2)
    common = ["pretrain", "--data", "cbis-ddsm", str(data), "--out", str(tmp_path / "o"), "--steps", "2",
              "--batch-size", "4", "--size", "32", "--patches-per-image", "2", "--threads", "1", "--quiet"]
    assert main(common) == 0
    assert "backbone.safetensors" in capsys.readouterr().out
    assert main(common + ["--lr", "0.1", "--resume"]) == 2
    assert "other settings" in capsys.readouterr().err
