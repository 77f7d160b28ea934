"""`branet prepare` on small constructed BUSI-like, MIAS-like and boxes-CSV datasets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from branet_pacs.datasets.cases import load_gray
from branet_pacs.datasets.prepare import prepare, register
from branet_pacs.datasets.rois import MANIFEST_COLUMNS
from branet_pacs.imaging.roi import extract_roi, roi_to_uint8


def _png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def _manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


# --------------------------------------------------------------------------------------------- BUSI
@pytest.fixture()
def busi(tmp_path: Path) -> Path:
    src = tmp_path / "busi"
    rng = np.random.default_rng(1)
    img = rng.integers(0, 60, (90, 120))
    img[20:40, 10:50] = 220
    img[60:80, 80:110] = 180
    _png(src / "benign" / "benign (1).png", img)
    m1 = np.zeros((90, 120), np.uint8); m1[20:40, 10:50] = 255
    m2 = np.zeros((90, 120), np.uint8); m2[60:80, 80:110] = 255
    _png(src / "benign" / "masks" / "benign (1)_mask.png", m1)
    _png(src / "benign" / "masks" / "benign (1)_mask_1.png", m2)
    img2 = rng.integers(0, 60, (70, 70)); img2[30:50, 25:45] = 240
    _png(src / "malignant" / "malignant (1).png", img2)
    m3 = np.zeros((70, 70), np.uint8); m3[30:50, 25:45] = 255
    _png(src / "malignant" / "masks" / "malignant (1)_mask.png", m3)
    _png(src / "malignant" / "malignant (2).png", img2)          # exact duplicate -> same group
    _png(src / "malignant" / "masks" / "malignant (2)_mask.png", m3)
    _png(src / "normal" / "normal (1).png", rng.integers(0, 60, (64, 80)))
    _png(src / "normal" / "masks" / "normal (1)_mask.png", np.zeros((64, 80), np.uint8))
    return src


def test_busi_one_roi_per_mask_through_the_shared_roi_code(busi: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = prepare("busi", out, src=busi, margin=0.2)
    rows = _manifest(out)
    assert [r["roi_file"] for r in rows] == ["benign/benign (1)-1.png", "benign/benign (1)-2.png",
                                            "malignant/malignant (1)-1.png", "malignant/malignant (2)-1.png"]
    assert tuple(rows[0]) == MANIFEST_COLUMNS
    assert rows[0]["box"] == "10 20 50 40" and rows[1]["box"] == "80 60 110 80"
    assert rows[0]["source"] == "benign/benign (1).png" and rows[0]["group"] == rows[1]["group"]
    assert rows[2]["group"] == rows[3]["group"] == "malignant (1)"   # identical pixels share a fold group
    assert report.rois == {"benign": 2, "malignant": 2}
    expected = roi_to_uint8(extract_roi(load_gray(busi / "benign" / "benign (1).png"), (80, 60, 110, 80), 0.2))
    assert np.array_equal(_read(out / "benign" / "benign (1)-2.png"), expected)
    mask = _read(out / "benign" / "masks" / "benign (1)-2.png")
    assert mask.shape == (90, 120) and mask[70, 90] == 255 and mask[30, 20] == 0   # this lesion's mask only
    assert not (out / "normal").exists()


def test_busi_normal_only_on_request_and_output_is_deterministic(busi: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    prepare("busi", a, src=busi, margin=0.15, include_normal=True)
    prepare("busi", b, src=busi, margin=0.15, include_normal=True)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "prepare.json")
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != "prepare.json")
    assert files_a == files_b and Path("normal/normal (1)-1.png") in files_a
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)


def test_prepare_refuses_a_non_empty_folder_it_did_not_write(busi: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        prepare("busi", out, src=busi, margin=0.15, force=True)
    assert (out / "precious.txt").exists()


# --------------------------------------------------------------------------------------------- MIAS
def test_mias_flips_y_handles_several_lesions_and_skips_calcifications_without_centre(tmp_path: Path) -> None:
    src = tmp_path / "mias"
    film = np.full((1024, 1024), 30, np.uint8)
    film[324 - 40:324 + 40, 300 - 40:300 + 40] = 250      # lesion 1: centre x=300, Y=700 -> row 324
    film[900 - 20:900 + 20, 600 - 20:600 + 20] = 250      # lesion 2: centre x=600, Y=124 -> row 900
    _png(src / "mdb001.png", film)
    _png(src / "mdb002.png", np.full((1024, 1024), 30, np.uint8))
    _png(src / "mdb003.png", np.full((1024, 1024), 30, np.uint8))
    (src / "Info.txt").write_text(
        "# REFNUM BG CLASS SEVERITY X Y RADIUS\n"
        "mdb001 G CIRC B 300 700 40\n"
        "mdb001 G SPIC M 600 124 20\n"
        "mdb002 F NORM \n"
        "mdb003 D CALC M *NOTE 3*\n")
    out = tmp_path / "out"
    report = prepare("mias", out, src=src, margin=0.5, min_radius=8)
    rows = {r["roi_file"]: r for r in _manifest(out)}
    assert set(rows) == {"benign/mdb001-1.png", "malignant/mdb001-2.png"}
    assert rows["benign/mdb001-1.png"]["box"] == "260 284 340 364"
    assert rows["malignant/mdb001-2.png"]["box"] == "580 880 620 920"
    assert {r["group"] for r in rows.values()} == {"patient001"}
    # the ROI sits on the bright lesion (without the flip it would be on the dark background)
    roi = _read(out / "benign" / "mdb001-1.png")
    assert roi[48:80, 48:80].mean() > 200 and roi[:16, :16].mean() < 50
    assert report.images == 3 and report.rois == {"benign": 1, "malignant": 1}
    assert len(report.skipped) == 1 and "mdb003" in report.skipped[0] and "CALC" in report.skipped[0]
    assert not (out / "benign" / "masks").exists()


def test_mias_min_radius_widens_tiny_lesions(tmp_path: Path) -> None:
    src = tmp_path / "mias"
    _png(src / "mdb005.png", np.full((1024, 1024), 30, np.uint8))
    (src / "Info.txt").write_text("mdb005 F CALC B 500 500 3\n")
    prepare("mias", tmp_path / "out", src=src, margin=0.0, min_radius=24)
    row = _manifest(tmp_path / "out")[0]
    assert row["box"] == "476 500 524 548" and row["group"] == "patient003"


# --------------------------------------------------------------------------------------------- boxes CSV + CLI
def test_boxes_csv_through_the_cli(tmp_path: Path) -> None:
    import argparse

    images = tmp_path / "imgs"
    _png(images / "sub" / "a.png", np.full((50, 60), 100, np.uint8))
    table = tmp_path / "boxes.csv"
    table.write_text("filename,class,xmin,ymin,xmax,ymax\nsub/a.png,M,5,5,25,30\nsub/a.png,benign,30,10,50,40\n")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "out"
    args = parser.parse_args(["prepare", "boxes", str(table), str(images), str(out), "--margin", "0.1"])
    assert args.func(args) == 0
    rows = _manifest(out)
    assert [(r["roi_file"], r["label"], r["box"], r["group"]) for r in rows] == [
        ("benign/sub_a-2.png", "benign", "30 10 50 40", "sub_a"),
        ("malignant/sub_a-1.png", "malignant", "5 5 25 30", "sub_a")]
    assert _read(out / rows[0]["roi_file"]).shape == (128, 128)
    info = json.loads((out / "prepare.json").read_text())
    assert info["window"] == "roi" and info["lesion_box"] == "prompt"     # annotated boxes, no outlines


def test_tissue_window_cuts_every_roi_of_an_image_on_its_tissue_levels(busi: Path, tmp_path: Path) -> None:
    from branet_pacs.imaging.roi import tissue_levels

    out = tmp_path / "out"
    prepare("busi", out, src=busi, margin=0.2, window="tissue")
    info = json.loads((out / "prepare.json").read_text())
    assert info["window"] == "tissue" and info["lesion_box"] == "mask"    # BUSI's traced outlines
    image = load_gray(busi / "benign" / "benign (1).png")
    expected = roi_to_uint8(extract_roi(image, (80, 60, 110, 80), 0.2, tissue_levels(image)))
    assert np.array_equal(_read(out / "benign" / "benign (1)-2.png"), expected)


# ------------------------------------------------------------------------------------------------- CBIS-DDSM
def test_cbis_ddsm_restores_the_aspect_and_groups_by_patient(tmp_path: Path) -> None:
    """A round mass on a 2:1 film stored squashed to a square: with aspect 2 the ROI shows it round again."""
    src = tmp_path / "cbis"
    squashed = np.full((100, 100), 20, np.uint8)
    rows, cols = np.ogrid[:100, :100]
    squashed[((rows - 50) / 10.0) ** 2 + ((cols - 50) / 20.0) ** 2 <= 1] = 240   # round mass, squashed by 2 in y
    (src / "films").mkdir(parents=True)
    for name in ("00001_LEFT_CC", "00001_LEFT_MLO", "00002_RIGHT_CC"):
        Image.fromarray(squashed).save(src / "films" / f"{name}.jpg", quality=95)
    header = "film,patient_id,side,view,label,pathology,x0,y0,x1,y1,assessment,mass_shape,mass_margins," \
             "breast_density,subtlety\n"
    (src / "lesions.csv").write_text(
        header
        + "films/00001_LEFT_CC.jpg,P_00001,LEFT,CC,malignant,MALIGNANT,30,40,70,60,4,IRREGULAR,SPICULATED,3,4\n"
        + "films/00001_LEFT_MLO.jpg,P_00001,LEFT,MLO,malignant,MALIGNANT,30,40,70,60,4,IRREGULAR,SPICULATED,3,4\n"
        + "films/00002_RIGHT_CC.jpg,P_00002,RIGHT,CC,benign,BENIGN_WITHOUT_CALLBACK,30,40,70,60,3,OVAL,"
          "CIRCUMSCRIBED,2,3\n")
    out = tmp_path / "out"
    report = prepare("cbis-ddsm", out, src=src, margin=0.0, aspect=2.0)
    manifest = {r["roi_file"]: r for r in _manifest(out)}
    assert report.rois == {"benign": 1, "malignant": 2} and report.images == 3
    cc = manifest["malignant/00001_LEFT_CC-1.png"]
    assert cc["box"] == "30 80 70 120", "box rows scaled by the aspect"
    assert {manifest[f]["group"] for f in manifest if f.startswith("malignant/")} == {"P_00001"}
    assert cc["site"] == "cbis-ddsm" and "view=CC" in cc["tags"] and "row_scale=2" in cc["tags"]
    # the restored mass is round: as bright along the ROI's vertical axis as along its horizontal one
    roi = _read(out / "malignant" / "00001_LEFT_CC-1.png").astype(float)
    assert abs(roi[10:118, 64].mean() - roi[64, 10:118].mean()) < 25
    squashed_out = tmp_path / "squashed"
    prepare("cbis-ddsm", squashed_out, src=src, margin=0.0, aspect=1.0)
    assert {r["roi_file"]: r for r in _manifest(squashed_out)}["malignant/00001_LEFT_CC-1.png"]["box"] == \
        "30 40 70 60"
    assert load_gray(src / "films" / "00001_LEFT_CC.jpg", 2.0).shape == (200, 100)
    # boxes only: each lesion's stand-in mask is the ellipse inscribed in its box, on the restored film
    from branet_pacs.datasets.cbis_ddsm import read_cbis_ddsm
    from branet_pacs.imaging.geometry import mask_box

    case = next(read_cbis_ddsm(src, aspect=2.0))
    lesion = case.lesions[0]
    assert not lesion.traced and lesion.mask.shape == case.pixels().shape == (200, 100)
    assert mask_box(lesion.mask) == lesion.box == (30, 80, 70, 120)
    assert lesion.mask[100, 50] and not lesion.mask[80, 30]          # centre in, box corner out


def test_cbis_ddsm_unreadable_film_is_recorded_and_the_rest_prepared(tmp_path: Path) -> None:
    src = tmp_path / "cbis"
    (src / "films").mkdir(parents=True)
    Image.fromarray(np.full((100, 100), 90, np.uint8)).save(src / "films" / "00001_LEFT_CC.jpg")
    (src / "films" / "00002_LEFT_CC.jpg").write_bytes(b"truncated download")
    (src / "lesions.csv").write_text(
        "film,patient_id,side,view,label,pathology,x0,y0,x1,y1\n"
        "films/00001_LEFT_CC.jpg,P_00001,LEFT,CC,benign,BENIGN,30,40,70,60\n"
        "films/00002_LEFT_CC.jpg,P_00002,LEFT,CC,malignant,MALIGNANT,30,40,70,60\n")
    report = prepare("cbis-ddsm", tmp_path / "out", src=src, margin=0.15)
    assert dict(report.rois) == {"benign": 1}
    assert len(report.skipped) == 1
    assert "00002_LEFT_CC.jpg" in str(report.skipped[0]) and "unreadable" in str(report.skipped[0])
