"""What `branet` prints when it cannot work: one line on stderr, exit status 2, no traceback (#13)."""

from __future__ import annotations

import subprocess
import sys

from branet_pacs.cli import main

import dicom_factory as factory
from paths import REPO


def test_a_settings_typo_names_every_unknown_key(tmp_path, capsys):
    bad = tmp_path / "branet.toml"
    bad.write_text('threds = 2\n[ingest]\nus_frame = "all"\nmax_frames = 4\n[segmentaton]\n')
    source = factory.write(factory.make_us(48, 64), tmp_path / "in.dcm")
    assert main(["analyze", str(source), "--out", str(tmp_path / "out"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'threds'" in err[0] and "'us_frame'" in err[0] and "'segmentaton'" in err[0]


def test_a_missing_sam_checkpoint_stops_the_run_once_before_any_file(tmp_path, capsys):
    files = [factory.write(factory.make_us(48, 64, seed=i), tmp_path / f"{i}.dcm") for i in range(3)]
    code = main(["analyze", *map(str, files), "--out", str(tmp_path / "out"), "--sam-checkpoint",
                 str(tmp_path / "sam_vit_b.pth"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "sam_vit_b.pth" in err[0] and "not found" in err[0]


def test_orthanc_status_without_a_node_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "branet_pacs.cli", "orthanc", "status", "--data", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "branet orthanc run" in lines[0], done.stderr


def test_default_logging_shows_warnings_only():
    done = subprocess.run([sys.executable, "-c", "import logging; from branet_pacs.cli import configure_logging; "
                           "configure_logging(False); logging.getLogger('branet_pacs.x').info('quiet'); "
                           "logging.getLogger('highdicom.seg').warning('chatter'); "
                           "logging.getLogger('branet_pacs.x').warning('loud')"],
                          capture_output=True, text=True, cwd=REPO)
    assert "loud" in done.stderr and "quiet" not in done.stderr and "chatter" not in done.stderr


def test_export_models_leaves_every_shipped_graph_in_the_cache(tmp_path, capsys, monkeypatch):
    import os
    from pathlib import Path

    cache = Path(os.environ["BRANET_ENGINE_CACHE"])          # the test run's cache (conftest), warm after a first run
    assert main(["export-models"]) == 0
    out = capsys.readouterr().out
    assert f"engine cache {cache}" in out
    for prefix in ("litemedsam-encoder", "litemedsam-box-decoder", "classifier-us-resnet18", "detector-us-lesion"):
        graphs = list(cache.glob(f"{prefix}-*.onnx"))
        assert graphs and all(g.with_suffix(".json").is_file() for g in graphs), prefix
    settings = tmp_path / "torch.toml"
    settings.write_text('engine = "torch"\n')
    assert main(["export-models", "--config", str(settings)]) == 0
    assert "nothing to export" in capsys.readouterr().out
    settings.write_text('engine = "tensorrt"\n')
    assert main(["export-models", "--config", str(settings)]) == 2


def test_train_cnn_weight_is_a_number_in_0_1_or_auto(tmp_path, capsys):
    import pytest

    for bad in ("1.5", "half"):
        with pytest.raises(SystemExit) as stop:
            main(["train", "--data", str(tmp_path), "--modality", "mg", "--out", str(tmp_path / "m"),
                  "--cnn-weight", bad])
        assert stop.value.code == 2 and "--cnn-weight" in capsys.readouterr().err
