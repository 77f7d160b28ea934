"""Nothing lost: a burst of studies, kill -9 of the worker mid-study and of Orthanc mid-queue, bounded retries.

One BraNet node for the module (StableAge 2 s, MaxAttempts 3, RetryDelay 1 s), restarted by the kill test.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

import pydicom
import pytest

from branet_pacs.orthanc.launcher import wait_for
from branet_pacs.orthanc.store import ServiceStore

from orthanc_harness import (
    branet_study,
    download,
    instances_by_modality,
    keep_logs,
    metadata,
    referenced_sources,
    send,
    small_us_study,
    start_branet,
    study_id,
    wait_final,
    write_files,
    write_template,
)

pytestmark = pytest.mark.integration
MAX_ATTEMPTS = 3


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("orthanc-recovery")
    template = write_template(tmp / "template.json", RetryDelay=1)
    node = start_branet(tmp, stable_age=2, template=template, max_attempts=MAX_ATTEMPTS)
    yield {"node": node, "tmp": tmp}
    node.stop()
    keep_logs(node, prefix="test_orthanc_recovery")


def _assert_one_sr_per_image(api, orthanc_id: str, sources: set[str], folder) -> None:
    """Exactly one SR per source image, each naming its source; SOP Instance UIDs unique; no SEG without SR."""
    found = instances_by_modality(api, orthanc_id)
    srs, segs = found.get("SR", []), found.get("SEG", [])
    refs = Counter()
    for sr in srs:
        refs.update(referenced_sources(pydicom.dcmread(download(api, sr["ID"], folder))) & sources)
    assert refs == Counter({s: 1 for s in sources}), f"study {orthanc_id}: SR references {dict(refs)}"
    uids = [i["MainDicomTags"]["SOPInstanceUID"] for i in srs + segs]
    assert len(uids) == len(set(uids))
    assert len(segs) <= len(srs)


def _workers_of(parent_pid: int) -> list[int]:
    """Worker processes started by the Orthanc with this PID (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if b"branet_pacs.orthanc.worker" in argv and str(parent_pid).encode() in argv:
                found.append(int(entry))
    return found


def test_burst_of_20_studies_is_all_analysed(env):
    node, tmp = env["node"], env["tmp"]
    api = node.api()
    studies = [small_us_study(1, seed=100 + i) for i in range(20)]
    files = [path for i, study in enumerate(studies) for path in write_files(study, tmp / "burst" / str(i))]
    send(node, files)
    ids = [study_id(api, str(study[0].StudyInstanceUID)) for study in studies]
    for orthanc_id, study in zip(ids, studies):
        detail = wait_final(api, orthanc_id, timeout=1800)
        assert detail["study"]["state"] == "analysed", detail["study"]
        assert detail["study"]["runs"] == 1
        _assert_one_sr_per_image(api, orthanc_id, {str(ds.SOPInstanceUID) for ds in study}, tmp / "burst-out")
    status = api.get_json("/branet/status")
    assert status["queue"]["queued"] == 0 and status["queue"]["running"] == 0


def test_kill_worker_mid_study_and_orthanc_mid_queue_loses_nothing(env):
    node, tmp = env["node"], env["tmp"]
    api = node.api()
    studies = [small_us_study(2, seed=200 + 2 * i) for i in range(4)]
    send(node, [p for i, s in enumerate(studies) for p in write_files(s, tmp / "crash" / str(i))])
    ids = [study_id(api, str(s[0].StudyInstanceUID)) for s in studies]

    # 1. kill -9 the worker once it has stored the first image's outputs of a study and works on the second
    def mid_study() -> tuple[str, int] | None:
        for orthanc_id in ids:
            detail = branet_study(api, orthanc_id)
            if detail["study"]["state"] == "running" and any(i["state"] == "ok" for i in detail["instances"]):
                worker = next(w for w in api.get_json("/branet/status")["workers"] if w["study"] == orthanc_id)
                return orthanc_id, worker["pid"]
        return None
    victim, pid = wait_for(mid_study, 900, 0.2, "a worker in the middle of a study")
    os.kill(pid, signal.SIGKILL)

    # 2. kill -9 Orthanc while studies are still queued, right after a new study arrived (not yet stable)
    def some_done_some_waiting() -> bool:
        states = [branet_study(api, i)["study"]["state"] for i in ids]
        return any(s == "analysed" for s in states) and any(s in ("queued", "running") for s in states)
    wait_for(some_done_some_waiting, 900, 0.2, "a queue with finished and waiting studies")
    late = small_us_study(1, seed=260)
    send(node, write_files(late, tmp / "crash" / "late"))
    node.kill()
    store = ServiceStore(node.data_dir / "branet" / "service.sqlite")
    assert not any(s.study_uid == str(late[0].StudyInstanceUID) for s in store.studies(1000)), \
        "the late study must not have been queued before the crash (the test relies on the replay of /changes)"
    store.close()
    wait_for(lambda: not _workers_of(node.pid), 30, 0.2, "the workers to die with Orthanc")

    node.start()
    api = node.api()
    late_id = study_id(api, str(late[0].StudyInstanceUID))
    for orthanc_id, study in zip([*ids, late_id], [*studies, late]):
        detail = wait_final(api, orthanc_id, timeout=1800)
        assert detail["study"]["state"] == "analysed", detail["study"]
        _assert_one_sr_per_image(api, orthanc_id, {str(ds.SOPInstanceUID) for ds in study}, tmp / "crash-out")
    errors = " ".join(e["message"] for e in api.get_json("/branet/status")["recent_errors"])
    assert "killed by signal 9" in errors


def test_bounded_retries_end_in_a_recorded_failure(env):
    node, tmp = env["node"], env["tmp"]
    api = node.api()
    study = small_us_study(1, seed=300)
    send(node, write_files(study, tmp / "doomed"))
    orthanc_id = study_id(api, str(study[0].StudyInstanceUID))
    killed: set[int] = set()
    for attempt in range(1, MAX_ATTEMPTS + 1):
        def running() -> int | None:
            workers = api.get_json("/branet/status")["workers"]
            return next((w["pid"] for w in workers
                         if w["study"] == orthanc_id and w["alive"] and w["pid"] not in killed), None)
        pid = wait_for(running, 900, 0.1, f"attempt {attempt} to start")
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
    detail = wait_final(api, orthanc_id, timeout=300, runs=0)
    assert detail["study"]["state"] == "failed"
    assert f"attempt {MAX_ATTEMPTS} of {MAX_ATTEMPTS}" in detail["study"]["reason"]
    assert "killed by signal 9" in detail["study"]["reason"]
    history = detail["attempts"]          # kept after the run: attempts and why, not only the last state
    assert [h["outcome"] for h in history] == ["retrying"] * (MAX_ATTEMPTS - 1) + ["failed"]
    assert all("killed by signal 9" in h["reason"] for h in history)
    meta = wait_for(lambda: (m := metadata(api, orthanc_id)).get("BraNetStatus") == "failed" and m, 60, 0.5,
                    "the failed state in Orthanc metadata")
    assert "giving up" in meta["BraNetReason"]
    # a failed study can be re-run on request, and then succeeds
    api.post_json(f"/branet/studies/{orthanc_id}/analyze", {})
    assert wait_final(api, orthanc_id, timeout=900, runs=1)["study"]["state"] == "analysed"
