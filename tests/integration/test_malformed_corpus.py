"""The malformed-input corpus through `branet analyze`, as a user runs it (a subprocess): every input gets its row(s)
with the status it should have and a reason, the good files beside them are analysed, nothing prints a traceback,
memory stays bounded (#13). The table goes to test-artifacts/corpus-cli.txt."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

import corpus
from paths import REPO

pytestmark = pytest.mark.integration
MAX_RSS_GIB = 2.5     # the models take about 1 GiB; a file must not add much to that


def _run(argv: list[str]) -> tuple[int, str, int]:
    """(exit status, stderr, peak RSS in bytes) of one command."""
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, stderr, usage.ru_maxrss * 1024


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("corpus")
    expected = corpus.write_corpus(base / "inbox")
    settings = base / "limits.toml"
    settings.write_text("[ingest]\n" + "".join(f"{k} = {v}\n" for k, v in corpus.LIMITS.items()))
    out = base / "out"
    code, stderr, rss = _run([sys.executable, "-m", "branet_pacs.cli", "analyze", str(base / "inbox"), "--out",
                              str(out), "--config", str(settings), "--no-progress", "--quiet"])
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return expected, rows, code, stderr, rss


def test_every_input_has_its_rows_with_the_right_status_and_a_reason(cli_run):
    expected, rows, code, _, _ = cli_run
    by_input = defaultdict(list)
    for row in rows:
        by_input[Path(row["source"]).name].append(row)
    assert set(by_input) == set(expected), "an input without a row, or a row without an input"
    wrong = {name: [r["status"] for r in by_input[name]] for name, status in expected.items()
             if any(r["status"] != status for r in by_input[name])}
    assert not wrong, wrong
    assert all(r["reason"].strip() for r in rows)
    for name, status in expected.items():
        if status != "ok":
            assert len(by_input[name]) == 1, name
    assert code == 1     # errors were recorded; every other input was still processed
    _write_table(expected, rows, cli_run[4])


def test_no_traceback_and_bounded_memory(cli_run):
    _, _, _, stderr, rss = cli_run
    assert "Traceback" not in stderr, stderr[-3000:]
    assert rss < MAX_RSS_GIB * 2 ** 30, f"peak RSS {rss / 2 ** 30:.2f} GiB"


def _write_table(expected: dict[str, str], rows: list[dict], rss: int) -> None:
    counts = Counter(r["status"] for r in rows)
    lines = [f"inputs {len(expected)}  rows {len(rows)}  ok {counts['ok']}  skipped {counts['skipped']}  "
             f"error {counts['error']}  peak RSS {rss / 2 ** 20:.0f} MiB", ""]
    reasons = {Path(r["source"]).name: (r["status"], r["reason"]) for r in rows}
    for name in sorted(expected):
        status, reason = reasons[name]
        lines.append(f"{name:44} {status:8} {reason.split(': ', 1)[-1][:110]}")
    folder = REPO / "test-artifacts"
    folder.mkdir(exist_ok=True)
    (folder / "corpus-cli.txt").write_text("\n".join(lines) + "\n")
