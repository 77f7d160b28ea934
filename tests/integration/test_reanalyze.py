"""`branet reanalyze` end to end against a real Orthanc (Debian package + DICOMweb plugin) seeded with synthetic
MG + US studies: DIMSE (C-MOVE, C-GET) and DICOMweb re-analysis store SEG + SR back, a second run redoes nothing,
`--force` re-stores without duplicates, a run interrupted (Ctrl-C) and one SIGKILLed mid-way resume without
duplicates, an unreachable source is a clear error.

One Orthanc serves the whole module; each test works on its own studies, selected by study date.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from branet_pacs.cli import main
from branet_pacs.config import DEFAULT_MODELS_DIR
from branet_pacs.models.errors import ModelUnavailable
from branet_pacs.reanalysis.run import version_marker
from branet_pacs.reanalysis.state import StateStore

import dicom_factory as factory
import pacs_harness as harness
from pacs_harness import assert_one_result_per_image, branet_outputs, pid_alive, run_log
from paths import REPO

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not harness.orthanc_available(), reason="Debian orthanc + orthanc-dicomweb needed")]

# The shipped models; BRANET_TEST_MODELS_DIR points elsewhere only while developing before they exist.
MODELS = Path(os.environ.get("BRANET_TEST_MODELS_DIR") or DEFAULT_MODELS_DIR)

DIMSE_DATES = ("20210105", "20210106", "20210107")   # US, MG, CT
WEB_DATE = "20220105"
KILL_DATES = ("20230105", "20230106", "20230107")


@pytest.fixture(scope="module")
def markers() -> dict[str, str]:
    try:
        return {kind: version_marker(str(MODELS), kind) for kind in ("US", "MG")}
    except ModelUnavailable as exc:
        pytest.skip(f"no shipped models to re-analyse with: {exc}")


def _us(date: str, seed: int) -> list[pydicom.Dataset]:
    study = factory.new_study(StudyDate=date, AccessionNumber=f"ACC{date}")
    return [factory.make_us(rows=120, cols=160, study=study, seed=seed)]


def _mg(date: str) -> list[pydicom.Dataset]:
    study = factory.new_study(StudyDate=date, AccessionNumber=f"ACC{date}")
    return [factory.make_mg(160, 128, study=study, laterality="L", seed=3)]


@pytest.fixture(scope="module")
def archive(tmp_path_factory, markers):
    """Orthanc seeded with: DIMSE set (US, MG, CT), DICOMweb set (US), kill set (3 x US)."""
    workdir = tmp_path_factory.mktemp("orthanc")
    server = harness.start_archive(workdir)
    studies: dict[str, list[pydicom.Dataset]] = {
        DIMSE_DATES[0]: _us(DIMSE_DATES[0], 1),
        DIMSE_DATES[1]: _mg(DIMSE_DATES[1]),
        DIMSE_DATES[2]: [factory.make_ct(study=factory.new_study(StudyDate=DIMSE_DATES[2]))],
        WEB_DATE: _us(WEB_DATE, 2),
        **{date: _us(date, 3 + i) for i, date in enumerate(KILL_DATES)},
    }
    for datasets in studies.values():
        server.upload(datasets)
    server.seeded = studies
    yield server
    server.stop()


def reanalyze(archive, source: str, state: Path, *extra: str) -> int:
    args = ["reanalyze", "--source", source, "--state", str(state), "--models-dir", str(MODELS), "--no-progress",
            "--calling-aet", harness.SCU_AET, "--receive-port", str(archive.scp_port), *extra]
    return main(args)


def last_run(state: Path) -> tuple[dict, list[dict]]:
    """(summary, study events) of the latest run in the JSONL log."""
    events = run_log(state)
    start = max(i for i, e in enumerate(events) if e["event"] == "run")
    run = events[start:]
    summary = [e for e in run if e["event"] == "summary"][-1]
    return summary, [e for e in run if e["event"] == "study"]


# ------------------------------------------------------------------------------------------------------------ DIMSE

@pytest.fixture(scope="module")
def dimse_run(archive, tmp_path_factory):
    state = tmp_path_factory.mktemp("dimse") / "state.sqlite"
    code = reanalyze(archive, archive.dimse_url, state, "--since", DIMSE_DATES[0], "--until", DIMSE_DATES[-1])
    return code, state


def test_dimse_move_stores_seg_and_sr_for_us_and_mg(archive, dimse_run, markers):
    code, state = dimse_run
    summary, studies = last_run(state)
    assert code == 0
    assert (summary["listed"], summary["analysed"], summary["skipped"], summary["failed"]) == (3, 2, 1, 0)
    by_uid = {e["study_uid"]: e for e in studies}
    ct = archive.seeded[DIMSE_DATES[2]][0]
    assert by_uid[str(ct.StudyInstanceUID)]["reason"] == "no breast image series"
    assert_one_result_per_image(archive, archive.seeded[DIMSE_DATES[0]], markers["US"])
    assert_one_result_per_image(archive, archive.seeded[DIMSE_DATES[1]], markers["MG"])
    segs = sum(len(branet_outputs(archive, str(archive.seeded[d][0].StudyInstanceUID))["SEG"])
               for d in DIMSE_DATES[:2])
    findings = sum(e.get("findings", 0) > 0 for e in studies)
    assert segs == findings
    assert segs >= 1, "no SEG stored: the shipped detector found no lesion on any synthetic image"


def test_dimse_second_run_redoes_nothing(archive, dimse_run, tmp_path):
    _, state = dimse_run
    before = archive.count_instances()
    assert reanalyze(archive, archive.dimse_url, state, "--since", DIMSE_DATES[0], "--until", DIMSE_DATES[-1]) == 0
    summary, studies = last_run(state)
    assert (summary["analysed"], summary["failed"], summary["skipped"]) == (0, 0, 3)
    assert studies == []                                   # all done according to the state file
    # A fresh state file: the archive itself says the studies already hold results of this model version.
    fresh = tmp_path / "fresh.sqlite"
    assert reanalyze(archive, archive.dimse_url, fresh, "--since", DIMSE_DATES[0], "--until", DIMSE_DATES[-1],
                     "--retrieve", "get") == 0
    summary, studies = last_run(fresh)
    reasons = sorted(e["reason"] for e in studies)
    assert reasons == ["already holds a BraNet-PACS SR of the current model version"] * 2 + ["no breast image series"]
    assert archive.count_instances() == before


# --------------------------------------------------------------------------------------------------------- DICOMweb

def test_dicomweb_stores_results_then_redoes_nothing_and_force_adds_no_duplicates(archive, tmp_path, markers,
                                                                                  monkeypatch):
    monkeypatch.setenv("BRANET_PACS_USER", harness.USER)
    monkeypatch.setenv("BRANET_PACS_PASSWORD", harness.PASSWORD)
    state = tmp_path / "web.sqlite"
    datasets = archive.seeded[WEB_DATE]
    accession = ["--query", f"AccessionNumber=ACC{WEB_DATE}", "--modality", "US"]
    assert reanalyze(archive, archive.dicomweb_url, state, *accession) == 0
    summary, _ = last_run(state)
    assert (summary["listed"], summary["analysed"], summary["failed"]) == (1, 1, 0)
    assert_one_result_per_image(archive, datasets, markers["US"])
    stored = archive.count_instances()

    assert reanalyze(archive, archive.dicomweb_url, state, *accession) == 0
    summary, studies = last_run(state)
    assert (summary["analysed"], summary["skipped"]) == (0, 1) and studies == []

    assert reanalyze(archive, archive.dicomweb_url, state, *accession, "--force") == 0
    summary, studies = last_run(state)
    assert (summary["analysed"], summary["skipped"]) == (1, 0)
    assert archive.count_instances() == stored            # same SOP Instance UIDs: the archive keeps one copy
    assert_one_result_per_image(archive, datasets, markers["US"])


# ------------------------------------------------------------------------------------------ interrupt, kill, resume

def _run_and_signal(archive, state: Path, signals: list[signal.Signals]) -> tuple[int, list[dict], list[int]]:
    """Start `branet reanalyze` on the kill set; once it has analysed one more study, send `signals` (0.3 s apart).
    Returns (exit code, the run's log events, its worker PIDs) after checking the workers are gone."""
    args = [sys.executable, "-m", "branet_pacs.cli", "reanalyze", "--source", archive.dimse_url, "--state", str(state),
            "--models-dir", str(MODELS), "--no-progress", "--calling-aet", harness.SCU_AET, "--retrieve", "get",
            "--since", KILL_DATES[0], "--until", KILL_DATES[-1]]
    seen = len(run_log(state))
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: list[int] = []
    deadline = time.monotonic() + 600   # a guard against a hang, not a speed requirement
    try:
        while time.monotonic() < deadline and process.poll() is None:
            events = run_log(state)[seen:]
            workers = next((e["pids"] for e in events if e["event"] == "workers"), workers)
            if any(e["event"] == "study" and e["status"] == "analysed" for e in events):
                break
            time.sleep(0.1)
        assert process.poll() is None, f"the run ended before it could be stopped: {process.stderr.read()!r}"
        for number, signum in enumerate(signals):
            if number:
                time.sleep(0.3)
            process.send_signal(signum)
        code = process.wait(120)
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
    assert workers, "the run never started its workers"
    deadline = time.monotonic() + 120
    while any(map(pid_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(pid_alive, workers)), "worker processes outlived their driver"
    return code, run_log(state)[seen:], workers


def test_interrupted_then_killed_run_resumes_without_duplicates(archive, tmp_path, markers):
    state = tmp_path / "kill.sqlite"
    # Ctrl-C twice: stop at once; studies in flight are left queued, the summary says interrupted.
    code, events, _ = _run_and_signal(archive, state, [signal.SIGINT, signal.SIGINT])
    assert code == 130
    summary = [e for e in events if e["event"] == "summary"]
    assert len(summary) == 1 and summary[0]["interrupted"] and summary[0]["analysed"] >= 1
    assert {e["status"] for e in events if e["event"] == "study"} <= {"analysed", "queued"}
    with StateStore(state) as store:
        assert set(store.counts(archive.dimse_url)) <= {"analysed", "queued"}   # nothing left "running"
    done_before_kill = summary[0]["analysed"]

    # SIGKILL: no summary, no cleanup; the next run must cope with whatever was left.
    if done_before_kill < len(KILL_DATES):
        code, events, _ = _run_and_signal(archive, state, [signal.SIGKILL])
        assert code == -signal.SIGKILL
        assert not any(e["event"] == "summary" for e in events)
        done_before_kill += sum(e["event"] == "study" and e["status"] == "analysed" for e in events)

    assert reanalyze(archive, archive.dimse_url, state, "--retrieve", "get",
                     "--since", KILL_DATES[0], "--until", KILL_DATES[-1]) == 0
    summary, studies = last_run(state)
    assert (summary["listed"], summary["failed"]) == (3, 0)
    assert summary["analysed"] == len(KILL_DATES) - done_before_kill
    if done_before_kill:
        assert summary["reasons"] == [{"status": "skipped", "reason": "done in an earlier run",
                                       "studies": done_before_kill}]
    for date in KILL_DATES:
        assert_one_result_per_image(archive, archive.seeded[date], markers["US"])


# ------------------------------------------------------------------------------------------------- unreachable

@pytest.mark.parametrize("url_of, cause", [
    (lambda port: f"dimse://NOBODY@127.0.0.1:{port}", "connection refused"),
    (lambda port: f"dicomweb+http://127.0.0.1:{port}/dicom-web", "connection refused"),
])
def test_unreachable_source_is_one_clear_line(tmp_path, capsys, url_of, cause):
    url = url_of(harness.free_port())
    code = main(["reanalyze", "--source", url, "--state", str(tmp_path / "s.sqlite"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and url in err[0] and cause in err[0], err


def test_wrong_password_and_unknown_ae_are_clear_errors(archive, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BRANET_PACS_USER", harness.USER)
    monkeypatch.setenv("BRANET_PACS_PASSWORD", "wrong")
    code = main(["reanalyze", "--source", archive.dicomweb_url, "--state", str(tmp_path / "a.sqlite"),
                 "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "HTTP 401" in err[0] and archive.dicomweb_url in err[0], err
    code = main(["reanalyze", "--source", archive.dimse_url, "--calling-aet", "STRANGER",
                 "--state", str(tmp_path / "b.sqlite"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "STRANGER" in err[0] and archive.dimse_url in err[0], err
