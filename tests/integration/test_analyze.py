"""`branet analyze` end to end on real parts: shipped models, real DICOM files, real validators on every output."""

from __future__ import annotations

import csv
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from branet_pacs.cli import main
from branet_pacs.dicom.seg import read_seg
from branet_pacs.types import BreastResult, ResultRow

import dicom_factory as factory
import validators as validate
from paths import REPO

SAMPLES = REPO / "samples"
pytestmark = pytest.mark.integration


def read_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == ResultRow.CSV_COLUMNS
        return list(reader)


def assert_outputs_valid(out: Path, rows: list[dict[str, str]]) -> None:
    """Every SEG/SR named in results.csv passes every validator against its source."""
    items = {}
    for row in rows:
        if row["status"] == "ok":
            seg = out / row["seg_file"] if row["seg_file"] else None
            items[row["sr_file"]] = (seg, out / row["sr_file"], [Path(row["source"])])
    assert items, "no outputs were produced"
    for (sr_file, _), reports in zip(items.items(), validate.validate_outputs_many(list(items.values()))):
        for report in reports:
            assert report.ok, f"{report.tool} on {sr_file}: {report.errors[:5]}"


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    """Sample US + MG studies, plus a CT (skipped), a truncated file (error) and a text file (skipped)."""
    folder = tmp_path_factory.mktemp("inbox")
    for study in ("us-study", "mg-study"):
        for path in (SAMPLES / study).glob("*.dcm"):
            (folder / study).mkdir(exist_ok=True)
            (folder / study / path.name).write_bytes(path.read_bytes())
    factory.write(factory.make_ct(), folder / "other" / "ct.dcm")
    factory.truncated_copy(SAMPLES / "us-study" / "US1.dcm", folder / "other" / "truncated.dcm")
    (folder / "other" / "notes.txt").write_text("not DICOM")
    return folder


@pytest.fixture(scope="module")
def automatic_run(mixed_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    code = main(["analyze", str(mixed_folder), "--out", str(out), "--no-progress"])
    return code, out, read_rows(out)


def test_every_file_gets_a_row_with_a_status(automatic_run, mixed_folder):
    code, out, rows = automatic_run
    sources = {Path(r["source"]).name for r in rows}
    assert sources == {"US1.dcm", "US2.dcm", "MG1.dcm", "MG2.dcm", "ct.dcm", "truncated.dcm", "notes.txt"}
    by_name = {}
    for row in rows:
        by_name.setdefault(Path(row["source"]).name, []).append(row)
    assert [r["status"] for r in by_name["ct.dcm"]] == ["skipped"]
    assert "CT" in by_name["ct.dcm"][0]["reason"]
    assert [r["status"] for r in by_name["truncated.dcm"]] == ["error"]
    assert [r["status"] for r in by_name["notes.txt"]] == ["skipped"]
    assert "not a DICOM file" in by_name["notes.txt"][0]["reason"]
    for name in ("US1.dcm", "US2.dcm", "MG1.dcm", "MG2.dcm"):
        assert all(r["status"] == "ok" for r in by_name[name]), by_name[name]
    assert code == 1  # errors were recorded, and the rest still processed


def test_breasts_csv_gives_each_breast_its_most_suspicious_view(automatic_run):
    _, out, rows = automatic_run
    with open(out / "breasts.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == BreastResult.CSV_COLUMNS
        breasts = list(reader)
    analysed = [r for r in rows if r["status"] == "ok"]
    keys = {(r["study_instance_uid"], r["modality"], r["laterality"]) for r in analysed}
    assert {(b["study_instance_uid"], b["modality"], b["laterality"]) for b in breasts} == keys
    assert any(b["modality"] == "MG" and b["laterality"] in ("L", "R") for b in breasts)
    for breast in breasts:
        mine = [r for r in analysed if (r["study_instance_uid"], r["modality"], r["laterality"]) ==
                (breast["study_instance_uid"], breast["modality"], breast["laterality"])]
        ps = [float(r["p_malignant"]) for r in mine if r["p_malignant"]]
        assert int(breast["findings"]) == len(ps)
        assert breast["p_malignant"] == (f"{max(ps):.4f}" if ps else "")


def test_automatic_outputs_are_valid_and_round_trip(automatic_run):
    _, out, rows = automatic_run
    assert_outputs_valid(out, rows)
    findings = [r for r in rows if r["status"] == "ok" and r["finding"]]
    assert findings, "the shipped detector found no lesion on any sample"
    for row in findings:
        sr = hd.sr.srread(out / row["sr_file"])
        groups = sr.content.get_image_measurement_groups()
        assert len(groups) >= int(row["finding"])
        seg = read_seg(out / row["seg_file"])
        assert seg.number_of_segments >= int(row["finding"])
        assert 0.0 <= float(row["p_malignant"]) <= 1.0
        assert row["label"] in ("benign", "malignant")
        assert Path(row["sr_file"]).parts[0] == pydicom.dcmread(row["source"], stop_before_pixels=True).StudyInstanceUID


def test_box_prompt_gives_exactly_one_finding_in_that_box(tmp_path):
    # mini-MIAS mdb028: malignant mass centred at x=338, y=1024-314=710, radius 56 (see samples/README.md)
    source = SAMPLES / "mg-study" / "MG2.dcm"
    out = tmp_path / "out"
    code = main(["analyze", str(source), "--out", str(out), "--box", "282,654,394,766", "--no-progress"])
    rows = read_rows(out)
    assert code == 0 and len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["finding"] == "1"
    x0, y0, x1, y1 = (int(rows[0][k]) for k in ("x0", "y0", "x1", "y1"))
    assert 282 <= x0 < x1 <= 394 and 654 <= y0 < y1 <= 766
    assert_outputs_valid(out, rows)


def test_missing_weights_is_a_clear_error_not_random_weights(tmp_path):
    empty_models = tmp_path / "models"
    empty_models.mkdir()
    out = tmp_path / "out"
    code = main(["analyze", str(SAMPLES / "us-study" / "US1.dcm"), "--out", str(out),
                 "--models-dir", str(empty_models), "--no-progress"])
    rows = read_rows(out)
    assert code == 1
    assert rows[0]["status"] == "error" and "model unavailable" in rows[0]["reason"]
    assert not list(out.rglob("*.dcm"))


def test_path_bytes_and_dataset_are_one_unit_of_work_with_the_same_objects(automatic_run):
    """The CLI, the Orthanc worker (bytes) and re-analysis hand the unit of work different inputs: the answer and
    the output UIDs are the same, and they are those the CLI wrote (a redone analysis makes the same objects)."""
    from branet_pacs.config import load_config
    from branet_pacs.pipeline import Analyzer

    _, out, rows = automatic_run
    source = SAMPLES / "us-study" / "US1.dcm"
    analyzer = Analyzer(load_config())
    results = [analyzer.analyze_instance(source), analyzer.analyze_instance(source.read_bytes(), name="bytes"),
               analyzer.analyze_instance(pydicom.dcmread(source))]
    summaries = {(r.status, r.summary().findings, r.summary().model_version) for r in results}
    assert len(summaries) == 1 and results[0].status.value == "ok"
    uids = [[str(ds.SOPInstanceUID) for ds in r.outputs] for r in results]
    assert uids[0] == uids[1] == uids[2] and len(uids[0]) >= 1
    cli = [r for r in rows if Path(r["source"]).name == "US1.dcm"][0]
    written = {pydicom.dcmread(out / cli[k]).SOPInstanceUID for k in ("seg_file", "sr_file") if cli[k]}
    assert written == set(uids[0])
    p = [f.p_malignant for r in results for image in r.images for f in image.findings]
    assert max(p) - min(p) < 1e-6


def test_a_box_entirely_outside_the_image_is_an_error(tmp_path):
    out = tmp_path / "out"
    code = main(["analyze", str(SAMPLES / "us-study" / "US1.dcm"), "--out", str(out), "--box", "5000,5000,5100,5100",
                 "--no-progress"])
    rows = read_rows(out)
    assert code == 1 and len(rows) == 1 and rows[0]["status"] == "error"
    assert "box error: every given box lies outside the analysed image region" in rows[0]["reason"]


def test_mammography_cad_sr_when_configured(tmp_path):
    config = tmp_path / "branet.toml"
    config.write_text(f'models_dir = "{REPO / "models"}"\n[output]\nmammography_cad_sr = true\n')
    out = tmp_path / "out"
    assert main(["analyze", str(SAMPLES / "mg-study"), "--out", str(out), "--config", str(config),
                 "--no-progress"]) == 0
    rows = read_rows(out)
    assert rows and all(r["cad_file"].endswith("_cad.dcm") for r in rows)
    items = {r["cad_file"]: (None, out / r["cad_file"], [Path(r["source"])]) for r in rows}
    for cad_file, reports in zip(items, validate.validate_outputs_many(list(items.values()))):
        cad = pydicom.dcmread(out / cad_file)
        assert cad.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.50"
        for report in reports:
            assert report.ok, f"{report.tool} on {cad_file}: {report.errors[:5]}"
    us = tmp_path / "us"
    assert main(["analyze", str(SAMPLES / "us-study"), "--out", str(us), "--config", str(config),
                 "--no-progress"]) == 0
    assert all(r["cad_file"] == "" for r in read_rows(us)), "the CAD SR is for mammograms only"
