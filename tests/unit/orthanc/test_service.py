"""The Orthanc service's parts that need no Orthanc: the durable queue, configuration generation, credentials,
settings, and the rule that nothing the plugin imports loads torch/numpy/pydicom."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time

import pytest

from branet_pacs.orthanc.credentials import load_credentials, load_or_create_credentials
from branet_pacs.orthanc.launcher import storescu_groups
from branet_pacs.orthanc.orthanc_config import DicomNode, RunOptions, generate_config, parse_destination
from branet_pacs.orthanc.settings import ServiceSettings
from branet_pacs.orthanc.status import ForwardState
from branet_pacs.orthanc.store import InstanceRecord, OutputRecord, ServiceStore
from branet_pacs.orthanc.supervisor import settings_from_env, settings_to_env
from branet_pacs.types import Status, StudyState

import dicom_factory as factory
from paths import REPO


@pytest.fixture
def store(tmp_path) -> ServiceStore:
    return ServiceStore(tmp_path / "service.sqlite")


# --- the queue -----------------------------------------------------------------------------------------------------
def test_enqueue_is_idempotent_and_claims_in_order(store):
    assert store.enqueue("a", "1.2.3", now=1.0) == "queued"
    assert store.enqueue("b", now=2.0) == "queued"
    assert store.enqueue("a", now=3.0) == "already-queued"
    first = store.claim("w1", now=10.0)
    assert (first.study_id, first.state, first.attempts, first.worker) == ("a", StudyState.RUNNING, 1, "w1")
    assert store.claim("w2", now=10.0).study_id == "b"
    assert store.claim("w3", now=10.0) is None


def test_stable_event_while_running_runs_again_after(store):
    store.enqueue("a")
    store.claim("w")
    assert store.enqueue("a") == "pending"
    record = store.finish("a", "w", StudyState.ANALYSED, "done", "v1")
    assert record.state is StudyState.QUEUED and record.runs == 1 and not record.pending
    store.claim("w")
    assert store.finish("a", "w", StudyState.ANALYSED, "done", "v1").state is StudyState.ANALYSED
    assert store.enqueue("a") == "queued"  # a final study is queued again when asked


def test_finish_needs_the_holding_worker(store):
    store.enqueue("a")
    store.claim("w1")
    with pytest.raises(LookupError):
        store.finish("a", "w2", StudyState.ANALYSED, "", "")
    with pytest.raises(ValueError):
        store.finish("a", "w1", StudyState.RUNNING, "", "")


def test_interrupted_study_is_retried_with_backoff_then_failed(store):
    store.enqueue("a")
    store.claim("w1", now=100.0)
    retries = store.release_worker("w1", "worker killed", max_attempts=2, delay=5.0)
    assert [(r.state, r.attempts) for r in retries] == [(StudyState.QUEUED, 1)]
    assert store.claim("w2", now=time.time()) is None          # waiting out the retry delay
    again = store.claim("w2", now=time.time() + 6)
    assert again.attempts == 2
    (retry,) = store.release_worker("w2", "worker killed", max_attempts=2, delay=5.0)
    assert retry.state is StudyState.FAILED
    study = store.study("a")
    assert study.state is StudyState.FAILED and "attempt 2 of 2" in study.reason and "giving up" in study.reason
    history = store.attempts("a")
    assert [(h["attempt"], h["outcome"], h["reason"]) for h in history] == [
        (1, "retrying", "worker killed"), (2, "failed", "worker killed")]
    store.enqueue("a")                                   # asked again: a new run, and the history stays
    store.claim("w3")
    store.finish("a", "w3", StudyState.ANALYSED, "1 image instance(s) analysed", "v1")
    assert [h["outcome"] for h in store.attempts("a")] == ["retrying", "failed", "analysed"]
    assert store.study("a").attempts == 0
    assert any("failed" in e["message"] for e in store.events())


def test_running_studies_without_a_live_worker_are_recovered(store):
    store.enqueue("a")
    store.enqueue("b")
    store.claim("dead")
    store.claim("alive")
    retries = store.recover_running({"alive"}, "interrupted", max_attempts=3, delay=0.0)
    assert [r.study_id for r in retries] == ["a"]
    assert store.study("a").state is StudyState.QUEUED
    assert store.study("b").state is StudyState.RUNNING


def test_clean_stop_gives_the_study_back_without_counting(store):
    store.enqueue("a")
    store.claim("w")
    store.requeue("a", "w")
    study = store.study("a")
    assert study.state is StudyState.QUEUED and study.attempts == 0


def test_own_outputs_and_planned_instances_are_not_new(store):
    pairs = [("i1", "1.1"), ("i2", "1.2"), ("i3", "1.3")]
    store.plan_instances("s", [("i1", "1.1"), ("i2", "1.2")])
    store.record_outputs([OutputRecord("9.1", "s", "i2", "SR")])     # recorded before it is stored
    store.record_instance(InstanceRecord("i2", "s", "1.2", Status.OK))
    assert store.new_instances("s", pairs + [("o1", "9.1")]) == [("i3", "1.3")]
    # a worker re-takes what an interrupted run planned, not what is decided
    assert store.instances_to_analyse("s", pairs + [("o1", "9.1")]) == [("i1", "1.1"), ("i3", "1.3")]
    store.output_stored("9.1", "o1")
    assert {i.instance_id: i.status for i in store.instances("s")} == {"i1": None, "i2": Status.OK}
    with pytest.raises(ValueError):
        store.record_instance(InstanceRecord("i3", "s", "1.3", None))


def test_databases_of_earlier_versions_redo_instances_left_storing(tmp_path):
    import sqlite3
    path = tmp_path / "service.sqlite"
    ServiceStore(path).close()
    with sqlite3.connect(path) as db:        # what a 0.1 database held after a crash mid-store
        db.execute("ALTER TABLE outputs ADD COLUMN file TEXT NOT NULL DEFAULT ''")
        db.execute("INSERT INTO instances (instance_id, study_id, sop_uid, state) VALUES ('i1', 's', '1.1', 'storing')")
        db.execute("INSERT INTO outputs (sop_uid, study_id, source_instance, kind, file) "
                   "VALUES ('9.1', 's', 'i1', 'SR', '/outbox/9.1.dcm')")
    store = ServiceStore(path)
    assert [i.status for i in store.instances("s")] == [None]
    assert store.instances_to_analyse("s", [("i1", "1.1")]) == [("i1", "1.1")]
    assert [o.sop_uid for o in store.outputs("s")] == ["9.1"]


def test_forwards_are_queued_once_and_back_off(store):
    store.record_outputs([OutputRecord("9.1", "s", "i1", "SR"), OutputRecord("9.2", "s", "i1", "SEG")])
    store.output_stored("9.1", "o1")
    store.output_stored("9.2", "o2")
    (fid,) = store.queue_forwards("s", ["PACS"], whole_study=False)
    assert store.queue_forwards("s", ["PACS"], whole_study=False) == []   # never twice
    (forward,) = store.due_forwards()
    assert forward.resources == ["o1", "o2"] and forward.state is ForwardState.PENDING
    store.forward_sending(fid, "job-1")
    assert store.forward_retry(fid, "refused", max_attempts=3, delay=10, max_delay=60) is ForwardState.PENDING
    assert store.due_forwards() == []                                      # backing off
    store.forward_sending(fid, "job-2")
    store.forward_sending(fid, "job-3")
    assert store.forward_retry(fid, "refused", max_attempts=3, delay=10, max_delay=60) is ForwardState.FAILED
    assert store.forward_counts()["failed"] == 1


def test_forced_rerun_forgets_results(store):
    store.record_outputs([OutputRecord("9.1", "s", "i1", "SR")])
    store.record_instance(InstanceRecord("i1", "s", "1.1", Status.OK))
    store.enqueue("s", force=True)
    assert store.claim("w").force
    store.forget_results("s")
    assert store.instances("s") == [] and store.outputs("s") == []


def test_instance_records_feed_the_study_verdict():
    from branet_pacs.orthanc.worker import summaries
    from branet_pacs.types import study_verdict

    ok = InstanceRecord("i1", "s", "1.1", Status.OK, model_version="us 1.0",
                        images=[{"findings": [{"index": 1}, {"index": 2}]}])
    bad = InstanceRecord("i2", "s", "1.2", Status.ERROR, reason="cannot decode")
    planned = InstanceRecord("i3", "s", "1.3", None)
    verdict = study_verdict(summaries([ok, bad, planned]))
    assert verdict.state is StudyState.ANALYSED and verdict.model_version == "us 1.0"
    assert "2 finding(s)" in verdict.reason and "SOP 1.2: cannot decode" in verdict.reason


# --- configuration -------------------------------------------------------------------------------------------------
def test_generated_configuration_is_secure_and_private(tmp_path):
    options = RunOptions(data_dir=tmp_path / "var", dicom_port=11112, http_port=18080,
                         allow_senders=("MODALITY@10.0.0.5", "PACS@10.0.0.9:4100"), forward=("DEST=ARCHIVE@10.0.0.7:104",),
                         stable_age=3, workers=2)
    generated = generate_config(options)
    config = json.loads(generated.path.read_text())
    assert stat.S_IMODE(generated.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(generated.credentials_path.stat().st_mode) == 0o600
    assert config["AuthenticationEnabled"] and not config["RemoteAccessAllowed"]
    assert not config["DicomAlwaysAllowStore"] and config["DicomCheckCalledAet"] and config["DicomCheckModalityHost"]
    assert config["StrictAetComparison"], "AE titles compare case-sensitively"
    assert not config["ExecuteLuaEnabled"] and config["LuaScripts"] == [] and not config["WebDavEnabled"]
    assert config["RegisteredUsers"] == {generated.credentials.username: generated.credentials.password}
    senders = {m["AET"]: m for m in config["DicomModalities"].values() if m["AllowStore"]}
    assert set(senders) == {"MODALITY", "PACS"} and senders["MODALITY"]["Host"] == "10.0.0.5"
    assert config["DicomModalities"]["DEST"] == {**config["DicomModalities"]["DEST"], "AET": "ARCHIVE",
                                                 "Port": 104, "AllowStore": False}
    assert config["StableAge"] == 3 and (config["DicomPort"], config["HttpPort"]) == (11112, 18080)
    assert config["UserMetadata"]["BraNetStatus"] == 4201
    assert config["PythonScript"].endswith("orthanc_plugin/branet_plugin.py")
    settings = ServiceSettings.from_orthanc_config(config)
    assert settings.workers == 2 and settings.forward.destinations == ("DEST",)
    assert settings_from_env(settings_to_env(settings)) == settings
    # credentials survive a regeneration; the repository never holds them
    again = generate_config(options)
    assert again.credentials == generated.credentials
    template = (REPO / "config" / "orthanc.json").read_text()
    assert "RegisteredUsers" not in template and generated.credentials.password not in template


def test_credentials_are_random_per_installation(tmp_path):
    a = load_or_create_credentials(tmp_path / "a.json")
    b = load_or_create_credentials(tmp_path / "b.json")
    assert a.password != b.password and len(a.password) >= 32
    assert load_credentials(tmp_path / "a.json") == a
    assert a.password not in repr(a)


def test_bad_options_are_rejected(tmp_path):
    for text in ("NOHOST", "@host", "A@", "WAY_TOO_LONG_AE_TITLE@h", "A@h:99999"):
        with pytest.raises(ValueError):
            DicomNode.parse(text)
    assert parse_destination("PACS") == ("PACS", None)
    with pytest.raises(ValueError):
        generate_config(RunOptions(data_dir=tmp_path, forward=("UNKNOWN",)))
    bad_template = tmp_path / "t.json"
    bad_template.write_text(json.dumps({"BraNet": {"Wrokers": 2}}))
    with pytest.raises(ValueError, match="Wrokers"):
        generate_config(RunOptions(data_dir=tmp_path, template=bad_template))


def test_storescu_proposes_each_files_transfer_syntax(tmp_path):
    plain = factory.write(factory.make_us(64, 64), tmp_path / "plain.dcm")
    rle = factory.write(factory.encode(factory.make_us(64, 64), "1.2.840.10008.1.2.5"), tmp_path / "rle.dcm")
    assert dict(storescu_groups([plain, rle])) == {None: [plain], "-xr": [rle]}


# The modules that run in the worker processes, never inside Orthanc.
WORKER_MODULES = {"worker", "thumbnails"}


def test_nothing_the_plugin_can_import_loads_heavy_modules():
    """Orthanc's embedded interpreter must never import torch (nor numpy/pydicom/PIL): every module of the
    package but the worker's, checked in a fresh interpreter."""
    modules = sorted(p.stem for p in (REPO / "branet_pacs" / "orthanc").glob("*.py")
                     if p.stem not in WORKER_MODULES | {"__init__"})
    assert {"node", "store", "changes", "forward", "supervisor", "rest", "settings", "status"} <= set(modules)
    code = ("import sys, importlib\n"
            f"for name in {modules!r}: importlib.import_module('branet_pacs.orthanc.' + name)\n"
            "print(sorted(m for m in ('torch', 'numpy', 'pydicom', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_cli_registers_orthanc_commands():
    from branet_pacs.cli import build_parser
    args = build_parser().parse_args(["orthanc", "run", "--dicom-port", "1", "--http-port", "2", "--data", "d",
                                      "--allow-sender", "A@h", "--allow-sender", "B@h"])
    assert args.allow_sender == ["A@h", "B@h"] and args.func.__name__ == "run"


def test_change_watermark_waits_until_studies_had_time_to_become_stable(store):
    """The persisted watermark only passes changes read more than `hold` seconds ago (crash-safe replay)."""
    from branet_pacs.orthanc.changes import ChangeFeed

    saved = []
    now = [100.0]
    feed = ChangeFeed(api=None, store=store, get_watermark=lambda: None, set_watermark=saved.append, hold=12.0,
                      clock=lambda: now[0])
    feed.watermark = feed.cursor = 5
    feed._unsafe.extend([(6, 100.0), (7, 101.0), (8, 110.0)])
    now[0] = 111.0
    feed._advance()
    assert saved == [] and feed.watermark == 5
    now[0] = 113.5
    feed._advance()
    assert saved == [7] and feed.watermark == 7 and list(feed._unsafe) == [(8, 110.0)]


def test_whole_study_forwarding_sends_the_study(store):
    store.record_outputs([OutputRecord("9.1", "s", "i1", "SR")])
    store.output_stored("9.1", "o1")
    ids = store.queue_forwards("s", ["PACS", "ARCHIVE"], whole_study=True)
    assert len(ids) == 2
    assert {(f.destination, tuple(f.resources)) for f in store.due_forwards()} == {("PACS", ("s",)),
                                                                                 ("ARCHIVE", ("s",))}
