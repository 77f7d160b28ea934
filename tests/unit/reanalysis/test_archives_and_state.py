"""Re-analysis parts that need no server or model: URLs, queries, folder archive, SQLite state, command-line
errors."""

from __future__ import annotations

import pytest

import branet_pacs
from branet_pacs.cli import main
from branet_pacs.reanalysis.archive import (
    ArchiveUnreachable,
    ConnectionOptions,
    DicomWebAddress,
    SeriesInfo,
    StudyQuery,
    StudyRef,
    credentials,
    date_range,
    parse_dicomweb,
    parse_dimse,
    redact,
    validate_url,
)
from branet_pacs.reanalysis.folder import FolderArchive, matches
from branet_pacs.reanalysis.run import is_branet_sr, model_kind
from branet_pacs.reanalysis.state import StateStore
from branet_pacs.types import StudyState

import dicom_factory as factory

# --- URLs ---------------------------------------------------------------------------------------------------------

def test_parse_dimse():
    address = parse_dimse("dimse://ORTHANC@pacs.example.org:4242")
    assert (address.called_aet, address.host, address.port) == ("ORTHANC", "pacs.example.org", 4242)
    assert parse_dimse("dimse://PACS@10.0.0.1").port == 104
    for bad in ("dimse://pacs:4242", "dimse://WAY_TOO_LONG_AE_TITLE@h:1", "dimse://A@h:99999", "dimse://A@"):
        with pytest.raises(ValueError):
            parse_dimse(bad)


def test_parse_dicomweb_keeps_path_and_splits_credentials():
    address = parse_dicomweb("dicomweb+https://alice:s%40cret@pacs.example.org:8443/orthanc/dicom-web/")
    assert address == DicomWebAddress("https://pacs.example.org:8443/orthanc/dicom-web", "alice", "s@cret")
    assert parse_dicomweb("dicomweb+http://localhost/dicom-web").base_url == "http://localhost/dicom-web"
    with pytest.raises(ValueError):
        parse_dicomweb("http://localhost/dicom-web")


def test_redact_hides_passwords_only():
    assert redact("dicomweb+http://alice:secret@h:8042/dicom-web") == "dicomweb+http://alice:***@h:8042/dicom-web"
    assert redact("dicomweb+http://h/dicom-web") == "dicomweb+http://h/dicom-web"
    assert redact("dimse://A@h:104") == "dimse://A@h:104"


def test_validate_url_names_the_accepted_forms():
    assert validate_url("folder:/data") == "folder:/data"
    with pytest.raises(ValueError, match="dimse://AET@host:port"):
        validate_url("ftp://pacs")


def test_credentials_prefer_url_then_options_then_environment(monkeypatch):
    monkeypatch.setenv("BRANET_PACS_USER", "env-user")
    monkeypatch.setenv("BRANET_PACS_PASSWORD", "env-pass")
    monkeypatch.setenv("BRANET_PACS_TOKEN", "env-token")
    assert credentials(DicomWebAddress("http://h", "url-user", "url-pass"), ConnectionOptions()) == \
        ("url-user", "url-pass", "env-token")
    assert credentials(DicomWebAddress("http://h"), ConnectionOptions(username="opt")) == \
        ("opt", "env-pass", "env-token")
    assert credentials(DicomWebAddress("http://h"), ConnectionOptions())[0] == "env-user"


def test_connection_options_are_checked():
    with pytest.raises(ValueError):
        ConnectionOptions(retrieve="push")
    with pytest.raises(ValueError):
        ConnectionOptions(calling_aet="X" * 17)
    assert ConnectionOptions(calling_aet="ME").move_destination == "ME"
    assert ConnectionOptions(calling_aet="ME", receive_aet="STORE").move_destination == "STORE"


# --- queries --------------------------------------------------------------------------------------------------------

def test_date_range():
    assert date_range("20200101", "20201231") == "20200101-20201231"
    assert date_range("20200101", None) == "20200101-"
    assert date_range(None, "20201231") == "-20201231"
    assert date_range(None, None) is None
    for since, until in (("2020-01-01", None), ("20210101", "20200101")):
        with pytest.raises(ValueError):
            date_range(since, until)


def test_study_query_sends_one_modality_and_checks_all():
    query = StudyQuery({"AccessionNumber": "A1"}, ("MG",))
    assert query.archive_keys() == {"AccessionNumber": "A1", "ModalitiesInStudy": "MG"}
    assert query.accepts(StudyRef("1", modalities=("MG", "SR")))
    assert not query.accepts(StudyRef("1", modalities=("US",)))
    both = StudyQuery(modalities=("MG", "US"))
    assert "ModalitiesInStudy" not in both.archive_keys()      # archives differ on multi-value matching
    assert both.accepts(StudyRef("1", modalities=("US",))) and not both.accepts(StudyRef("1", modalities=("CT",)))


@pytest.mark.parametrize("value, pattern, vr, expected", [
    ("20200615", "20200101-20201231", "DA", True),
    ("20210615", "20200101-20201231", "DA", False),
    ("20210615", "20200101-", "DA", True),
    ("20190615", "-20200101", "DA", True),
    ("BREAST US LEFT", "*US*", "LO", True),
    ("CHEST", "*US*", "LO", False),
    ("A123", "A12?", "SH", True),
    (["MG", "SR"], "US\\MG", "CS", True),
    ("anything", "", "LO", True),
])
def test_folder_matching(value, pattern, vr, expected):
    assert matches(value, pattern, vr) is expected


# --- folder archive ---------------------------------------------------------------------------------------------------

def test_folder_archive_lists_filters_retrieves_and_stores(tmp_path):
    root = tmp_path / "archive"
    us = factory.make_us(64, 80, study=factory.new_study(StudyDate="20200110", AccessionNumber="A1"))
    mg = factory.make_mg(96, 80, study=factory.new_study(StudyDate="20210110", AccessionNumber="A2"))
    factory.write(us, root / "a" / "us.dcm")
    factory.write(mg, root / "b" / "mg.dcm")
    (root / "notes.txt").write_text("not DICOM")
    archive = FolderArchive(root, f"folder:{root}")
    archive.check()

    uids = {ref.study_uid: ref for ref in archive.iter_studies(StudyQuery())}
    assert set(uids) == {us.StudyInstanceUID, mg.StudyInstanceUID}
    assert uids[us.StudyInstanceUID].modalities == ("US",)
    assert [r.study_uid for r in archive.iter_studies(StudyQuery({"StudyDate": "20210101-"}))] == \
        [mg.StudyInstanceUID]
    assert [r.study_uid for r in archive.iter_studies(StudyQuery({"AccessionNumber": "A1"}))] == \
        [us.StudyInstanceUID]
    assert [r.study_uid for r in archive.iter_studies(StudyQuery(modalities=("MG",)))] == [mg.StudyInstanceUID]

    series = archive.series(us.StudyInstanceUID)
    assert [(s.series_uid, s.modality, s.instances) for s in series] == [(us.SeriesInstanceUID, "US", 1)]
    files = archive.retrieve(us.StudyInstanceUID, [us.SeriesInstanceUID], tmp_path / "unused")
    assert files == [root / "a" / "us.dcm"] and not (tmp_path / "unused").exists()

    sr = factory.make_sr(us)
    sr.Manufacturer = branet_pacs.MANUFACTURER
    sr.SoftwareVersions = ["BraNet-PACS 0.1.0", "us-model 1.0"]
    out = factory.write(sr, tmp_path / "out" / "sr.dcm")
    archive.store([out])
    archive.store([out])                                       # same SOP Instance UID: kept once
    stored = list((root / us.StudyInstanceUID).glob("*.dcm"))
    assert [p.name for p in stored] == [f"{sr.SOPInstanceUID}.dcm"]
    ours = [s for s in archive.series(us.StudyInstanceUID) if is_branet_sr(s)]
    assert [s.software_versions for s in ours] == [("BraNet-PACS 0.1.0", "us-model 1.0")]


def test_folder_archive_that_does_not_exist_is_unreachable(tmp_path):
    with pytest.raises(ArchiveUnreachable, match="not a folder"):
        FolderArchive(tmp_path / "missing", "folder:missing").check()


def test_branet_sr_recognition_and_model_kind():
    assert is_branet_sr(SeriesInfo("1", "SR", manufacturer=branet_pacs.MANUFACTURER))
    assert not is_branet_sr(SeriesInfo("1", "SR", manufacturer="Someone else"))
    assert not is_branet_sr(SeriesInfo("1", "SEG", manufacturer=branet_pacs.MANUFACTURER))
    assert [model_kind(m) for m in ("US", "MG", "DX", "CR")] == ["US", "MG", "MG", "MG"]


# --- state ------------------------------------------------------------------------------------------------------------

def _refs(n: int) -> list[StudyRef]:
    return [StudyRef(f"1.2.3.{i}", "20200101", ("US",)) for i in range(n)]


def test_state_resumes_what_is_not_done_under_the_current_model_key(tmp_path):
    path = tmp_path / "state.sqlite"
    with StateStore(path) as state:
        run = state.begin_run("src", "src", "US=v1", {})
        assert state.record_listed(run, "src", iter(_refs(5)), batch=2) == 5
        rows = list(state.todo(run, "src", "US=v1", force=False, chunk=2))
        assert [r.study_uid for r in rows] == [f"1.2.3.{i}" for i in range(5)]
        state.mark("src", "1.2.3.0", StudyState.ANALYSED, model_key="US=v1", outputs=2)
        state.mark("src", "1.2.3.1", StudyState.SKIPPED, "no breast image series", model_key="US=v1")
        state.mark("src", "1.2.3.2", StudyState.FAILED, "retrieve failed")
        state.mark("src", "1.2.3.3", StudyState.RUNNING)      # killed while running
        state.finish_run(run, {"analysed": 1})

    with StateStore(path) as state:                              # a new run of the same command
        run = state.begin_run("src", "src", "US=v1", {})
        state.record_listed(run, "src", iter(_refs(5)))
        assert state.status("src", "1.2.3.0") == (StudyState.ANALYSED, "")
        assert state.count(run, "src", "US=v1", force=False) == (5, 2)
        todo = list(state.todo(run, "src", "US=v1", force=False))
        assert [r.study_uid for r in todo] == ["1.2.3.2", "1.2.3.3", "1.2.3.4"]
        assert [r.attempts for r in todo] == [0, 1, 0]
        assert len(list(state.todo(run, "src", "US=v1", force=True))) == 5
        assert len(list(state.todo(run, "src", "US=v2", force=False))) == 5   # a new model version redoes all
        assert state.counts("src") == {"analysed": 1, "skipped": 1, "failed": 1, "running": 1, "queued": 1}


def test_state_files_of_earlier_versions_say_queued_for_pending(tmp_path):
    import sqlite3
    path = tmp_path / "old.sqlite"
    with StateStore(path) as state:
        run = state.begin_run("src", "src", "k", {})
        state.record_listed(run, "src", iter(_refs(2)))
    with sqlite3.connect(path) as db:                     # what a 0.1 state file holds
        db.execute("UPDATE studies SET status = 'pending'")
    with StateStore(path) as state:
        assert state.counts("src") == {"queued": 2}


def test_state_only_works_on_this_runs_listing(tmp_path):
    with StateStore(tmp_path / "state.sqlite") as state:
        first = state.begin_run("src", "src", "k", {})
        state.record_listed(first, "src", iter(_refs(3)))
        second = state.begin_run("src", "src", "k", {})
        state.record_listed(second, "src", iter(_refs(3)[:1]))      # a narrower query
        assert [r.study_uid for r in state.todo(second, "src", "k", False)] == ["1.2.3.0"]
        other = state.begin_run("other", "other", "k", {})
        assert list(state.todo(other, "other", "k", False)) == []


# --- command line -----------------------------------------------------------------------------------------------------

def test_cli_rejects_bad_arguments_with_exit_2(tmp_path, capsys):
    assert main(["reanalyze", "--source", "ftp://pacs", "--state", str(tmp_path / "s")]) == 2
    assert "dimse://AET@host:port" in capsys.readouterr().err
    assert main(["reanalyze", "--source", "folder:/x", "--since", "2020-01-01", "--state", str(tmp_path / "s")]) == 2
    assert "YYYYMMDD" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["reanalyze", "--source", "folder:/x", "--query", "NotAKeyword=1"])
    assert exit_info.value.code == 2
    assert "not a DICOM attribute keyword" in capsys.readouterr().err


def test_cli_missing_folder_is_one_clear_line(tmp_path, capsys):
    url = f"folder:{tmp_path / 'nowhere'}"
    assert main(["reanalyze", "--source", url, "--state", str(tmp_path / "s.sqlite"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and url in err[0] and "not a folder" in err[0]


def test_state_file_is_used_by_one_run_at_a_time(tmp_path):
    from branet_pacs.reanalysis.state import StateBusy
    with StateStore(tmp_path / "state.sqlite"):
        with pytest.raises(StateBusy, match="another run"):
            StateStore(tmp_path / "state.sqlite")
    StateStore(tmp_path / "state.sqlite").close()     # free again once the first run closed it
