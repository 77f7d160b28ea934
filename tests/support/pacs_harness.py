"""A real Debian Orthanc acting as the archive for re-analysis tests (plain functions, no pytest).

`start_archive(workdir)` starts `/usr/sbin/Orthanc` with its own configuration on free loopback ports:
- the DICOMweb plugin only (the exact file, so the other Debian plugins stay unloaded);
- HTTP basic authentication with one test user;
- `DicomAlwaysAllowStore: false` and one registered modality, our AE (`SCU_AET`), with its own storage SCP port so
  C-MOVE can reach it; only that AE may store, find, move or get (`DicomCheckModalityHost` on).
The process is stopped by its PID (`Archive.stop()`).
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import requests

import branet_pacs
from branet_pacs.outputs import output_kind

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
ARCHIVE_AET = "ARCHIVE"
SCU_AET = "BRANETTEST"
USER, PASSWORD = "branet-test", "not-a-real-secret"


def orthanc_available() -> bool:
    return Path(ORTHANC).exists() and Path(DICOMWEB_PLUGIN).exists()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Archive:
    """A running Orthanc; URLs for `branet reanalyze` and a small REST client for assertions."""

    workdir: Path
    http_port: int
    dicom_port: int
    scp_port: int                      # where our storage SCP listens for C-MOVE (registered in Orthanc)
    process: subprocess.Popen
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dimse_url(self) -> str:
        return f"dimse://{ARCHIVE_AET}@127.0.0.1:{self.dicom_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"dicomweb+http://127.0.0.1:{self.http_port}/dicom-web"

    def get(self, path: str, **params) -> object:
        response = self.session.get(self.http_url + path, params=params, timeout=30)
        response.raise_for_status()
        return response.json()

    def upload(self, datasets: Iterable[pydicom.Dataset]) -> None:
        """Store instances through the REST API (not through the transports under test)."""
        from io import BytesIO
        for ds in datasets:
            buffer = BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            response = self.session.post(self.http_url + "/instances", data=buffer.getvalue(), timeout=30)
            response.raise_for_status()

    def study_id(self, study_uid: str) -> str:
        found = self.session.post(self.http_url + "/tools/lookup", data=study_uid, timeout=30).json()
        ids = [item["ID"] for item in found if item["Type"] == "Study"]
        assert ids, f"study {study_uid} not in the archive"
        return ids[0]

    def count_instances(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.session.close()


def _config(workdir: Path, http_port: int, dicom_port: int, scp_port: int) -> dict:
    return {
        "Name": "BraNetReanalyzeTestArchive",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ARCHIVE_AET,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "StudiesMetadata": "Full",
                     "SeriesMetadata": "Full"},
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": False,
        "DicomCheckModalityHost": True,
        "DicomCheckCalledAet": True,
        "DicomModalities": {"branet": [SCU_AET, "127.0.0.1", scp_port]},
        "DicomScpTimeout": 30,
        "StableAge": 60,
        "HttpTimeout": 30,
        "StorageCompression": False,
        "OverwriteInstances": False,
        "ConcurrentJobs": 2,
        "LimitFindResults": 0,
        "LimitFindInstances": 0,
    }


def start_archive(workdir: str | Path, timeout: float = 60.0) -> Archive:
    """Start Orthanc on free loopback ports and wait until its REST API answers."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port, scp_port = free_port(), free_port(), free_port()
    while len({http_port, dicom_port, scp_port}) < 3:
        dicom_port, scp_port = free_port(), free_port()
    config = workdir / "orthanc.json"
    config.write_text(json.dumps(_config(workdir, http_port, dicom_port, scp_port), indent=2))
    log = open(workdir / "orthanc.log", "wb")
    process = subprocess.Popen([ORTHANC, "--logdir=" + str(workdir), str(config)], stdout=log,
                               stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
    log.close()
    archive = Archive(workdir, http_port, dicom_port, scp_port, process)
    archive.session.auth = (USER, PASSWORD)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.returncode}; see {workdir}/orthanc.log")
        try:
            if archive.session.get(archive.http_url + "/system", timeout=2).ok:
                return archive
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            archive.stop()
            raise RuntimeError(f"Orthanc did not answer within {timeout:.0f} s; see {workdir}/orthanc.log")
        time.sleep(0.2)


# ------------------------------------------------------------------------------- what a re-analysis left behind

def branet_outputs(archive, study_uid: str) -> dict[str, list[pydicom.Dataset]]:
    """BraNet-PACS objects stored in a study, by kind (SR / SEG / CAD), read back from the archive."""
    out: dict[str, list[pydicom.Dataset]] = {"SR": [], "SEG": [], "CAD": []}
    for item in archive.get(f"/studies/{archive.study_id(study_uid)}/instances"):
        response = archive.session.get(f"{archive.http_url}/instances/{item['ID']}/file", timeout=30)
        response.raise_for_status()
        ds = pydicom.dcmread(io.BytesIO(response.content))
        if ds.get("Manufacturer") == branet_pacs.MANUFACTURER:
            out[output_kind(ds)].append(ds)
    return out


def evidence_uids(ds: pydicom.Dataset) -> set[str]:
    return {str(ref.ReferencedSOPInstanceUID) for series in ds.CurrentRequestedProcedureEvidenceSequence
            for ref in series.ReferencedSeriesSequence for ref in ref.ReferencedSOPSequence}


def assert_one_result_per_image(archive, datasets: list[pydicom.Dataset], marker: str) -> None:
    """Every source image has exactly one BraNet SR of the current model version (and its SEG when it found
    lesions); the SR names the SEG as evidence."""
    study_uid = str(datasets[0].StudyInstanceUID)
    outputs = branet_outputs(archive, study_uid)
    sources = {str(ds.SOPInstanceUID) for ds in datasets}
    srs = outputs["SR"]
    assert len(srs) == len(sources), f"expected one SR per image, got {len(srs)} for {len(sources)}"
    seg_uids = {str(seg.SOPInstanceUID) for seg in outputs["SEG"]}
    for sr in srs:
        assert marker in sr.SoftwareVersions
        assert str(sr.SeriesDescription).startswith("BraNet RESEARCH USE ONLY")
        referenced = evidence_uids(sr)
        assert len(referenced & sources) == 1
        assert referenced - sources <= seg_uids          # any other evidence is a SEG we stored
    assert len(outputs["SEG"]) == sum(bool(evidence_uids(sr) & seg_uids) for sr in srs)
    sources_of_srs = [next(iter(evidence_uids(sr) & sources)) for sr in srs]
    assert sorted(sources_of_srs) == sorted(sources)


def run_log(state: Path) -> list[dict]:
    """The events of `branet reanalyze`'s JSONL log beside the state file (none yet when it does not exist)."""
    log = Path(state).with_suffix(".jsonl")
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[-1].startswith("Z"))
