"""`branet agreement` against hand-computed reader-study statistics."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from branet_pacs.evaluation.agreement import agreement_report, kappa_test, read_ratings
from branet_pacs.evaluation.commands import register

# ten cases; 1 = malignant
A = [1, 1, 1, 1, 0, 0, 0, 0, 1, 0]
B = [1, 1, 1, 0, 0, 0, 0, 1, 0, 0]
T = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]


def _write(path: Path, labels: list[int], extra: str = "", style: str = "words") -> Path:
    names = {"words": ("benign", "malignant"), "letters": ("B", "M"), "digits": ("0", "1")}[style]
    rows = "".join(f"case{i:02d}.png,{names[v]}\n" for i, v in enumerate(labels))
    path.write_text("file,label\n" + rows + extra)
    return path


def test_kappa_and_reader_metrics_by_hand(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.csv", A)
    b = _write(tmp_path / "b.csv", B, extra="only_in_b.png,M\n", style="letters")
    t = _write(tmp_path / "t.csv", T, style="digits")
    report = agreement_report(a, b, t)
    assert report["n"] == 10 and report["unmatched"] == {"A": 0, "B": 1, "truth": 0}
    # agreement on 7 of 10: p_o = 0.7; marginals A 0.5/0.5, B 0.6/0.4: p_e = 0.5*0.6 + 0.5*0.4 = 0.5
    assert report["percent_agreement"] == pytest.approx(70.0)
    k = report["kappa"]
    assert k["kappa"] == pytest.approx(0.4)                       # (0.7 - 0.5) / (1 - 0.5)
    # SE0 = sqrt(0.5 + 0.25 - (0.5*0.6*1.1 + 0.5*0.4*0.9)) / (0.5 * sqrt(10)) = sqrt(0.24) / 1.5811388
    assert k["se0"] == pytest.approx(0.309839, abs=1e-6)
    assert k["z"] == pytest.approx(1.290994, abs=1e-6)
    assert k["p_value"] == pytest.approx(0.19670, abs=2e-4)      # two-sided normal tail of z
    # CI: SE = sqrt(0.7 * 0.3 / 10) / 0.5 = 0.289828
    assert k["ci95"] == pytest.approx([0.4 - 1.96 * 0.289828, 0.4 + 1.96 * 0.289828], abs=1e-5)
    ra, rb = report["readers"]["A"], report["readers"]["B"]
    # A: TP 4 (cases 0-3), FN 1 (case 4), FP 1 (case 8), TN 4
    assert (ra["tp"], ra["fn"], ra["fp"], ra["tn"]) == (4, 1, 1, 4)
    assert ra["accuracy"] == ra["sensitivity"] == ra["specificity"] == ra["ppv"] == ra["npv"] == pytest.approx(0.8)
    # B: TP 3, FN 2, FP 1 (case 7), TN 4
    assert (rb["tp"], rb["fn"], rb["fp"], rb["tn"]) == (3, 2, 1, 4)
    assert rb["accuracy"] == pytest.approx(0.7) and rb["sensitivity"] == pytest.approx(0.6)
    assert rb["specificity"] == pytest.approx(0.8) and rb["ppv"] == pytest.approx(0.75)
    assert rb["npv"] == pytest.approx(4 / 6) and rb["prevalence"] == pytest.approx(0.5)


def test_perfect_and_chance_agreement() -> None:
    assert kappa_test([1, 0, 1, 0], [1, 0, 1, 0])["kappa"] == pytest.approx(1.0)
    chance = kappa_test([1, 1, 0, 0], [1, 0, 1, 0])
    assert chance["kappa"] == pytest.approx(0.0) and chance["p_value"] == pytest.approx(1.0)
    assert math.isnan(kappa_test([1, 1], [1, 1])["kappa"])       # no variation: kappa undefined


def test_cli_prints_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = _write(tmp_path / "a.csv", A), _write(tmp_path / "b.csv", B)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "agreement.json"
    args = parser.parse_args(["agreement", "--ratings", str(a), str(b), "--out", str(out)])
    assert args.func(args) == 0
    assert "kappa: 0.4000" in capsys.readouterr().out
    assert json.loads(out.read_text())["kappa"]["kappa"] == pytest.approx(0.4)


def test_bad_csv_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("image,rating\nx.png,M\n")
    with pytest.raises(ValueError):
        read_ratings(bad)
    twice = tmp_path / "twice.csv"
    twice.write_text("file,label\nx.png,M\nx.png,B\n")
    with pytest.raises(ValueError):
        read_ratings(twice)
