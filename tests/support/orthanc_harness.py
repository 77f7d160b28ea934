"""Real Orthanc servers for the integration tests: the BraNet node (`branet orthanc run`) and a plain Orthanc acting
as the downstream PACS, on free loopback ports, started and stopped by PID. Plain helpers, no pytest here.

Set BRANET_TEST_PIPELINE_CONFIG to a branet.toml to run the node with another pipeline configuration (e.g. another
models_dir while developing); by default the repository's config/branet.toml and models/ are used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom

from branet_pacs.dicom.codes import MAMMOGRAPHY_CAD_SR
from branet_pacs.orthanc.credentials import load_or_create_credentials
from branet_pacs.orthanc.launcher import NodeProcess, branet_node, free_port, send_files, wait_for
from branet_pacs.orthanc.orthanc_config import DEFAULT_TEMPLATE, ORTHANC_BINARY
from branet_pacs.orthanc.rest import HttpOrthanc

import dicom_factory as factory  # tests/support is on sys.path (tests/conftest.py)
from paths import REPO

SENDER_AET = "TESTMODALITY"
FINAL_STATES = {"analysed", "skipped", "error", "failed"}


def pipeline_config() -> Path | None:
    value = os.environ.get("BRANET_TEST_PIPELINE_CONFIG")
    return Path(value) if value else None


def write_template(path: Path, **branet: Any) -> Path:
    """config/orthanc.json with some "BraNet" keys replaced (Forward values merge into the Forward object)."""
    template = json.loads(DEFAULT_TEMPLATE.read_text(encoding="utf-8"))
    forward = branet.pop("Forward", None)
    template["BraNet"].update(branet)
    if forward:
        template["BraNet"]["Forward"].update(forward)
    path.write_text(json.dumps(template, indent=2), encoding="utf-8")
    return path


def start_branet(tmp: Path, *, stable_age: int = 1, forward: Sequence[str] = (), template: Path | None = None,
                 max_attempts: int | None = None, senders: Sequence[str] = (f"{SENDER_AET}@127.0.0.1",),
                 name: str = "node", branet_config: Path | None = None) -> NodeProcess:
    node = branet_node(tmp / name, tmp / f"{name}.log", dicom_port=free_port(), http_port=free_port(),
                       allow_senders=senders, forward=forward, stable_age=stable_age, max_attempts=max_attempts,
                       branet_config=branet_config or pipeline_config(), template=template)
    node.start()
    wait_for(lambda: all(w["alive"] for w in node.api().get_json("/branet/status")["workers"]), 60, 0.2,
             "the worker processes")
    return node


def plain_orthanc(tmp: Path, aet: str, senders: Sequence[tuple[str, str]], name: str = "pacs") -> NodeProcess:
    """A plain Orthanc (no plugin) accepting C-STORE only from `senders` ((AET, host) pairs), auth on."""
    data = tmp / name
    data.mkdir(parents=True, exist_ok=True)
    credentials = load_or_create_credentials(data / "credentials.json")
    config = {
        "Name": name, "DicomAet": aet, "DicomPort": free_port(), "HttpPort": free_port(),
        "StorageDirectory": str(data / "storage"), "IndexDirectory": str(data / "storage"),
        "Plugins": [], "AuthenticationEnabled": True, "RemoteAccessAllowed": False,
        "RegisteredUsers": {credentials.username: credentials.password},
        "DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": True, "DicomCheckModalityHost": True,
        "DicomCheckCalledAet": True, "StableAge": 1, "WebDavEnabled": False,
        "DicomModalities": {f"s{i}": {"AET": a, "Host": h, "Port": 104, "AllowStore": True}
                            for i, (a, h) in enumerate(senders)},
    }
    (data / "orthanc.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    node = NodeProcess(command=[str(ORTHANC_BINARY), str(data / "orthanc.json")], data_dir=data,
                       log_path=tmp / f"{name}.log")
    return node.start()


# --- studies -------------------------------------------------------------------------------------------------------
def write_files(datasets: Sequence[pydicom.Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [factory.write(ds, folder / f"{ds.SOPInstanceUID}.dcm") for ds in datasets]


def send(node: NodeProcess, files: Sequence[Path], calling_aet: str = SENDER_AET, check: bool = True):
    return send_files(files, node.dicom_port, node.aet, calling_aet, check=check)


def small_us_study(n: int = 1, seed: int = 0, **kwargs: Any) -> list[pydicom.Dataset]:
    study = factory.new_study()
    series = pydicom.uid.generate_uid()
    return [factory.make_us(rows=192, cols=256, seed=seed + i, study=study, series_uid=series,
                            instance_number=i + 1, **kwargs) for i in range(n)]


def small_mg_study(n: int = 2, seed: int = 0) -> list[pydicom.Dataset]:
    study = factory.new_study()
    series = pydicom.uid.generate_uid()
    return [factory.make_mg(rows=320, cols=256, seed=seed + i, study=study, series_uid=series, instance_number=i + 1,
                            laterality="L" if i % 2 == 0 else "R") for i in range(n)]


def study_id(api: HttpOrthanc, study_uid: str, timeout: float = 60) -> str:
    """Orthanc's id of a study, once Orthanc has it."""
    def lookup() -> str | None:
        answer = json.loads(api.request("POST", "/tools/lookup", study_uid.encode(), "text/plain"))
        return next((a["ID"] for a in answer if a["Type"] == "Study"), None)
    return wait_for(lookup, timeout, 0.2, f"study {study_uid}")


def branet_study(api: HttpOrthanc, orthanc_id: str) -> dict[str, Any]:
    return api.get_json(f"/branet/studies/{orthanc_id}")


def wait_final(api: HttpOrthanc, orthanc_id: str, timeout: float = 600, runs: int = 1) -> dict[str, Any]:
    """/branet/studies/{id} once the study reached a final state after at least `runs` runs."""
    def final() -> dict[str, Any] | None:
        detail = branet_study(api, orthanc_id)
        study = detail["study"]
        if study.get("state") == "failed":     # attempts used up: final, and the run is not counted
            return detail
        return detail if study.get("state") in FINAL_STATES and study.get("runs", 0) >= runs else None
    return wait_for(final, timeout, 0.5, f"study {orthanc_id} to be analysed")


def metadata(api: HttpOrthanc, orthanc_id: str) -> dict[str, str]:
    names = api.get_json(f"/studies/{orthanc_id}/metadata")
    return {name: api.get(f"/studies/{orthanc_id}/metadata/{name}").decode() for name in names}


def instances_by_modality(api: HttpOrthanc, orthanc_id: str) -> dict[str, list[dict[str, Any]]]:
    """A study's instances by modality; Mammography CAD SRs under "CAD" (their modality is SR too)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for series in api.get_json(f"/studies/{orthanc_id}/series"):
        modality = series["MainDicomTags"].get("Modality", "")
        instances = api.get_json(f"/series/{series['ID']}/instances")
        if modality == "SR" and instances and \
                api.get(f"/instances/{instances[0]['ID']}/metadata/SopClassUid").decode() == MAMMOGRAPHY_CAD_SR:
            modality = "CAD"
        out.setdefault(modality, []).extend(instances)
    return out


def referenced_sources(sr: pydicom.Dataset) -> set[str]:
    """SOP Instance UIDs of the images an SR's evidence names."""
    refs = set()
    for study in sr.get("CurrentRequestedProcedureEvidenceSequence", []):
        for series in study.get("ReferencedSeriesSequence", []):
            for item in series.get("ReferencedSOPSequence", []):
                refs.add(str(item.ReferencedSOPInstanceUID))
    return refs


def download(api: HttpOrthanc, instance_id: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{instance_id}.dcm"
    path.write_bytes(api.get(f"/instances/{instance_id}/file"))
    return path


def keep_logs(*nodes: NodeProcess, prefix: str) -> None:
    """Copy the servers' logs to test-artifacts/orthanc-logs/ (CI keeps that folder)."""
    folder = REPO / "test-artifacts" / "orthanc-logs"
    folder.mkdir(parents=True, exist_ok=True)
    for node in nodes:
        if node.log_path.exists():
            (folder / f"{prefix}-{node.log_path.name}").write_bytes(node.log_path.read_bytes())
