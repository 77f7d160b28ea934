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

import corpus
import pytest

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


# ------------------------------------------------------------------------------------------------ the Orthanc node

@pytest.fixture(scope="module")
def node_run(tmp_path_factory):
    """The corpus sent file by file with storescu, as a PACS would; then what the node made of every file."""
    import pydicom

    from orthanc_harness import send, start_branet, study_id, wait_final

    base = tmp_path_factory.mktemp("corpus-node")
    expected = corpus.write_corpus(base / "inbox")
    settings = base / "limits.toml"
    settings.write_text("[ingest]\n" + "".join(f"{k} = {v}\n" for k, v in corpus.LIMITS.items()))
    node = start_branet(base, stable_age=1, branet_config=settings)
    outcome: dict[str, tuple[str, str]] = {}      # file name -> (what became of it, reason)
    try:
        api = node.api()
        files = sorted(p for p in (base / "inbox").rglob("*") if p.name in expected and not p.is_dir())
        studies: dict[str, list[tuple[str, str]]] = {}
        refused_sops: dict[str, str] = {}
        for path in files:
            result = send(node, [path], check=False)[0]
            refused = result.returncode != 0 or "E:" in result.stderr
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True)
                sop, study = str(header.get("SOPInstanceUID", "")), str(header.get("StudyInstanceUID", ""))
            except Exception:  # noqa: BLE001 - storescu sends nothing it cannot read either
                sop = study = ""
            if refused:
                said = " ".join(result.stderr.split())[-160:] or f"storescu exit status {result.returncode}"
                outcome[path.name] = ("refused at C-STORE", said)
                refused_sops[path.name] = sop
            else:
                studies.setdefault(study, []).append((path.name, sop))
        for study, members in studies.items():
            detail = wait_final(api, study_id(api, study), timeout=600)
            records = {i["sop_uid"]: i for i in detail["instances"]}
            for name, sop in members:
                record = records.get(sop)
                outcome[name] = (record["state"], record["reason"]) if record else \
                    ("not recorded", detail["study"]["reason"])
        status = api.get_json("/branet/status")
        for name, sop in refused_sops.items():      # the node's own reason, where our filter refused it
            said = next((e["message"] for e in status["recent_errors"] if sop and sop in e["message"]), "")
            if said:
                outcome[name] = ("refused at C-STORE", said)
    finally:
        node.stop()
    log = node.log_path.read_text(errors="replace")
    log_mode = node.log_path.stat().st_mode & 0o777
    return expected, outcome, status, log, log_mode


def test_every_file_sent_to_the_node_is_refused_or_recorded_with_a_reason(node_run):
    expected, outcome, status, log, _ = node_run
    sendable = {n for n in expected if not n.startswith(("dangling", "link-", "README", "png-", "empty"))}
    assert sendable <= set(outcome), sorted(sendable - set(outcome))
    for name, (state, reason) in outcome.items():
        assert state == "ok" or reason.strip(), name
        if state != "refused at C-STORE":
            want = expected[name]
            if name.startswith("zz-duplicate") or name == "IM000000":
                want = "ok"          # the same SOP Instance UID again: Orthanc keeps the first copy
            assert state in (want, "ok") if want == "ok" else state == want, (name, state, reason)
    for name in ("good-us.dcm", "good-mg.dcm", "good-jpeg-extended-wrong-scan-header.dcm", "nested-good.dcm"):
        assert outcome[name][0] == "ok", (name, outcome[name])
    refused_by_us = [e["message"] for e in status["recent_errors"] if e["message"].startswith("C-STORE refused")]
    assert any("ingest.max_frame_pixels" in m for m in refused_by_us)
    assert status["counters"]["refused_instances"] >= 2
    assert "Traceback" not in log
    _write_node_table(outcome, status)


def test_the_node_log_is_private(node_run):
    _, _, _, _, mode = node_run
    assert mode == 0o600


def _write_node_table(outcome: dict[str, tuple[str, str]], status: dict) -> None:
    counts = Counter(state for state, _ in outcome.values())
    lines = [f"files sent {len(outcome)}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) +
             f"; refused by the BraNet filter {status['counters'].get('refused_instances', 0)}", ""]
    lines += [f"{name:44} {state:20} {reason[:100]}" for name, (state, reason) in sorted(outcome.items())]
    folder = REPO / "test-artifacts"
    folder.mkdir(exist_ok=True)
    (folder / "corpus-node.txt").write_text("\n".join(lines) + "\n")
