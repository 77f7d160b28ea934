"""`branet reanalyze --engine ray` on a real two-node Ray cluster (`ray.cluster_utils.Cluster`: a head and a worker
node, separate raylets and object stores) with a real Orthanc (DICOMweb) as the archive.

These tests run inside a private network namespace that has only loopback (tests/integration/test_reanalyze_ray.py
starts them with `unshare -n`): on Linux Ray binds the machine's primary address whatever it is told, so only in
such a namespace do Ray's nodes and all test traffic stay on 127.0.0.1. Ray is stopped through the processes this
module started (Cluster.shutdown / remove_node kill them by PID), never with `ray stop`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest

from branet_pacs.cli import main
from branet_pacs.config import DEFAULT_MODELS_DIR
from branet_pacs.reanalysis.run import version_marker

import dicom_factory as factory
import pacs_harness as harness
from pacs_harness import pid_alive, run_log
from paths import REPO

pytestmark = pytest.mark.integration

MODELS = Path(os.environ.get("BRANET_TEST_MODELS_DIR") or DEFAULT_MODELS_DIR)
SAME_DATE = "20240105"                                  # the engines-agree set (2 studies)
KILL_NODE_DATES = tuple(f"202402{day:02d}" for day in range(1, 9))    # 8 studies, a node removed mid-run
KILL_DRIVER_DATES = tuple(f"202403{day:02d}" for day in range(1, 5))  # 4 studies, the driver SIGKILLed mid-run
# Attributes that say when an object was made: the only ones two runs of the same models may differ in.
CREATION_TIMES = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime")


@pytest.fixture(scope="module", autouse=True)
def private_network():
    """Refuse to run where Ray would bind a real interface (see the module docstring)."""
    if os.environ.get("BRANET_NETNS") != "1":
        pytest.fail("run through tests/integration/test_reanalyze_ray.py (a private network namespace)")


def _us(date: str, seed: int, images: int = 1) -> list[pydicom.Dataset]:
    study = factory.new_study(StudyDate=date, AccessionNumber=f"ACC{date}")
    return [factory.make_us(rows=120, cols=160, study=study, seed=seed + 100 * i) for i in range(images)]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    server = harness.start_archive(tmp_path_factory.mktemp("orthanc"))
    studies = {SAME_DATE + "a": _us(SAME_DATE, 1, images=2)}
    studies.update({date: _us(date, 10 + i) for i, date in enumerate(KILL_NODE_DATES)})
    studies.update({date: _us(date, 30 + i) for i, date in enumerate(KILL_DRIVER_DATES)})
    for datasets in studies.values():
        server.upload(datasets)
    server.seeded = studies
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def reanalyze(archive, cluster, state: Path, *extra: str, engine: str = "ray") -> int:
    args = ["reanalyze", "--source", archive.dicomweb_url, "--state", str(state), "--models-dir", str(MODELS),
            "--no-progress", "--workers", "2", "--engine", engine, *extra]
    if engine == "ray":
        args += ["--ray-address", cluster.address]
    return main(args)


def summary_of(state: Path) -> dict:
    return [e for e in run_log(state) if e["event"] == "summary"][-1]


def one_result_per_image(archive, datasets: list[pydicom.Dataset]) -> None:
    harness.assert_one_result_per_image(archive, datasets, version_marker(str(MODELS), "US"))


@pytest.fixture()
def web_credentials(monkeypatch):
    monkeypatch.setenv("BRANET_PACS_USER", harness.USER)
    monkeypatch.setenv("BRANET_PACS_PASSWORD", harness.PASSWORD)


def _without_creation_times(path: Path) -> bytes:
    from io import BytesIO

    ds = pydicom.dcmread(path)
    for keyword in CREATION_TIMES:
        if keyword in ds:
            setattr(ds, keyword, "")
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = ""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_ray_and_local_engines_write_the_same_objects(archive, cluster, tmp_path, web_credentials):
    written = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        out.mkdir()
        code = reanalyze(archive, cluster, tmp_path / f"{engine}.sqlite", "--dest", f"folder:{out}",
                         "--accession", f"ACC{SAME_DATE}", engine=engine)
        assert code == 0
        assert summary_of(tmp_path / f"{engine}.sqlite")["analysed"] == 1
        written[engine] = {p.relative_to(out): p for p in out.rglob("*.dcm")}
    assert written["ray"].keys() == written["local"].keys()           # same objects, same SOP Instance UIDs
    assert len(written["ray"]) >= 2                                   # an SR per image at least
    for name, path in written["ray"].items():
        assert _without_creation_times(path) == _without_creation_times(written["local"][name]), name
    workers = [e for e in run_log(tmp_path / "ray.sqlite") if e["event"] == "workers"][0]
    assert workers["engine"] == "ray" and len(workers["actors"]) == 2
    assert len({actor["node"] for actor in workers["actors"]}) == 2, "one actor per node of the cluster"
    assert {actor["ip"] for actor in workers["actors"]} == {"127.0.0.1"}


def _wait_for(condition, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout    # a guard against a hang, not a speed requirement
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_driver_killed_mid_run_resumes_from_the_state_file(archive, cluster, tmp_path, web_credentials):
    state = tmp_path / "driver.sqlite"
    args = [sys.executable, "-m", "branet_pacs.cli", "reanalyze", "--source", archive.dicomweb_url,
            "--state", str(state), "--models-dir", str(MODELS), "--no-progress", "--workers", "2",
            "--engine", "ray", "--ray-address", cluster.address,
            "--since", KILL_DRIVER_DATES[0], "--until", KILL_DRIVER_DATES[-1]]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        _wait_for(lambda: process.poll() is not None or any(
            e["event"] == "study" and e["status"] == "analysed" for e in run_log(state)), "a first study")
        assert process.poll() is None, process.stderr.read()
        process.kill()
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
    first = run_log(state)
    assert not any(e["event"] == "summary" for e in first)
    actors = [e for e in first if e["event"] == "workers"][0]["pids"]
    _wait_for(lambda: not any(map(pid_alive, actors)), "Ray to remove the dead driver's actors", timeout=120)
    done_before = sum(e["event"] == "study" and e["status"] == "analysed" for e in first)

    assert reanalyze(archive, cluster, state, "--since", KILL_DRIVER_DATES[0], "--until", KILL_DRIVER_DATES[-1]) == 0
    summary = summary_of(state)
    assert (summary["listed"], summary["failed"]) == (len(KILL_DRIVER_DATES), 0)
    # the dead driver's 2 actors may finish the study each held and store its result before Ray removes them (seen
    # under load): the resumed run then skips that study (its result is in the archive) rather than storing it twice
    assert summary["analysed"] + summary["skipped"] == len(KILL_DRIVER_DATES)
    assert done_before <= summary["skipped"] <= done_before + len(actors)
    for date in KILL_DRIVER_DATES:
        one_result_per_image(archive, archive.seeded[date])


def test_node_removed_mid_run_study_runs_elsewhere_and_is_stored_once(archive, cluster, tmp_path,
                                                                     web_credentials):
    """The worker node is removed (raylet, object store and its actor killed) while its actor analyses a study."""
    state = tmp_path / "node.sqlite"
    worker_node = cluster.worker.node_id
    before = archive.count_instances()
    result = {}
    run = threading.Thread(target=lambda: result.update(code=reanalyze(
        archive, cluster, state, "--since", KILL_NODE_DATES[0], "--until", KILL_NODE_DATES[-1])))
    run.start()
    try:
        # the worker node's actor has handed in one study and (assigned at once) holds the next one
        _wait_for(lambda: not run.is_alive() or any(
            e["event"] == "study" and e.get("node") == worker_node for e in run_log(state)), "the worker node")
        assert run.is_alive(), "the run ended before the node could be removed"
        cluster.remove_node(cluster.worker)
        run.join(900)
        assert not run.is_alive()
    finally:
        cluster.worker = cluster.add_node(num_cpus=1)   # the cluster as the next test expects it
    assert result["code"] == 0
    summary = summary_of(state)
    assert (summary["listed"], summary["analysed"], summary["failed"]) == (len(KILL_NODE_DATES),) * 2 + (0,)
    studies = [e for e in run_log(state) if e["event"] == "study"]
    assert len(studies) == len(KILL_NODE_DATES)                 # one record per study
    retried = [e for e in studies if e.get("retried")]
    assert retried, "no study was in flight on the removed node"
    assert all(e["attempts"] == 2 and e["node"] != worker_node for e in retried)
    for date in KILL_NODE_DATES:
        one_result_per_image(archive, archive.seeded[date])
    srs = sum(len(ds) for date, ds in archive.seeded.items() if date in KILL_NODE_DATES)
    assert archive.count_instances() - before >= srs            # the SRs (and SEGs) of every image, once each


def test_actors_that_cannot_start_end_in_one_clear_error_and_missing_models_are_named(cluster, tmp_path):
    """An actor whose set-up raises (here: an unknown inference engine) is replaced a bounded number of times, then
    the run gets one clear error; an actor on a node without the models starts and says what it lacks."""
    import dataclasses

    import ray

    from branet_pacs.config import load_config
    from branet_pacs.reanalysis.ray_engine import MAX_ATTEMPTS, EngineUnavailable, RayPool

    broken = dataclasses.replace(load_config(), engine="no-such-engine")
    with pytest.raises(EngineUnavailable) as info:
        RayPool(1, broken, cluster.address)
    assert not ray.is_initialized(), "the pool leaves the cluster it joined"
    message = str(info.value)
    assert message.startswith(f"no Ray actor could load the models on {cluster.address} ({MAX_ATTEMPTS} tried): ")
    assert "unknown engine 'no-such-engine'" in message, message

    pool = RayPool(1, dataclasses.replace(load_config(), models_dir=str(tmp_path / "no-models")), cluster.address)
    try:
        (actor,) = pool.describe()["actors"]
        assert actor["missing_models"] and all("no-models" in m or "manifest" in m for m in actor["missing_models"])
    finally:
        pool.close()
    assert not ray.is_initialized()
