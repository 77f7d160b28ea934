"""Run a BraNet Orthanc node in the background and talk to it: used by the demo, the benchmark and the tests.

`start_node` runs the real entry point (`branet orthanc run ...`, which execs Orthanc, so the process id is
Orthanc's), waits until the REST API answers, and returns a `NodeProcess` that stops it by PID. `send_files`
is a real modality: dcmtk's `storescu`, proposing each file's own transfer syntax.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from branet_pacs.orthanc.credentials import Credentials, load_credentials
from branet_pacs.orthanc.rest import HttpOrthanc, OrthancError

T = TypeVar("T")

def dcmtk_executable(name: str) -> str:
    """dcmtk's `name` from PATH, skipping this Python environment's own scripts: pynetdicom installs console
    scripts of the same names (storescu, findscu, ...) with other options into the virtual environment."""
    venv_bin = Path(sys.prefix).resolve() / "bin"
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if entry and Path(entry).resolve() != venv_bin:
            found = shutil.which(name, path=entry)
            if found:
                return found
    raise FileNotFoundError(f"dcmtk's {name} is not on PATH (Debian package dcmtk; `make setup` installs it)")


# storescu option that proposes a file's transfer syntax (the default proposes uncompressed ones only)
STORESCU_TS_OPTION = {
    "1.2.840.10008.1.2.5": "-xr",       # RLE Lossless
    "1.2.840.10008.1.2.4.50": "-xy",    # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "-xx",    # JPEG Extended
    "1.2.840.10008.1.2.4.57": "-xs",    # JPEG Lossless
    "1.2.840.10008.1.2.4.70": "-xs",    # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": "-xt",    # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "-xu",    # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": "-xv",    # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": "-xw",    # JPEG 2000
    "1.2.840.10008.1.2.1.99": "-xd",    # Deflated Explicit VR Little Endian
}


def free_port() -> int:
    """A TCP port free on all interfaces right now (Orthanc binds every interface)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def wait_for(probe: Callable[[], T | None], timeout: float, interval: float = 0.5, what: str = "condition") -> T:
    """Call `probe` until it returns something truthy; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except (OrthancError, OSError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}"
                               + (f" (last error: {last_error})" if last_error else ""))
        time.sleep(interval)


@dataclass
class NodeProcess:
    """An Orthanc (with or without the BraNet plugin) started in the background, stopped by its PID."""

    command: list[str]
    data_dir: Path
    log_path: Path
    process: subprocess.Popen | None = None
    config: dict[str, Any] = field(default_factory=dict)
    credentials: Credentials | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def http_port(self) -> int:
        return int(self.config["HttpPort"])

    @property
    def dicom_port(self) -> int:
        return int(self.config["DicomPort"])

    @property
    def aet(self) -> str:
        return str(self.config.get("DicomAet", "ORTHANC"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def api(self, timeout: float = 60.0) -> HttpOrthanc:
        creds = self.credentials
        return HttpOrthanc(self.url, creds.username if creds else "", creds.password if creds else "", timeout)

    def start(self, ready_timeout: float = 120.0) -> "NodeProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Orthanc's own log may name a patient (PatientID, when it refuses an instance without Study or Series
        # Instance UID itself, before any plugin sees it): readable by the owner only
        log = open(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        os.chmod(self.log_path, 0o600)
        self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        log.close()
        config_path = self.data_dir / "orthanc.json"
        wait_for(lambda: self._exited() or config_path.is_file(), 60, 0.1, "the generated configuration")
        self._raise_if_exited()
        self.config = json.loads(config_path.read_text(encoding="utf-8"))
        credentials = self.data_dir / "credentials.json"
        self.credentials = load_credentials(credentials) if credentials.exists() else None
        api = self.api(timeout=5)
        wait_for(lambda: self._raise_if_exited() or api.get_json("/system"), ready_timeout, 0.2,
                 f"Orthanc on port {self.http_port}")
        return self

    def _exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def _raise_if_exited(self) -> None:
        if self._exited():
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.command[0]} exited with code {self.process.returncode}:\n{tail}")

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (Orthanc stops its plugin, which stops the workers), SIGKILL after `timeout`."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.returncode

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def restart(self, ready_timeout: float = 120.0) -> "NodeProcess":
        self.stop()
        return self.start(ready_timeout)


def branet_node(data_dir: Path, log_path: Path, *, dicom_port: int, http_port: int, allow_senders: Sequence[str] = (),
                forward: Sequence[str] = (), stable_age: int | None = None, workers: int | None = None,
                max_attempts: int | None = None, branet_config: Path | None = None, template: Path | None = None,
                aet: str | None = None) -> NodeProcess:
    """A NodeProcess for `branet orthanc run` with these options (not started)."""
    command = [sys.executable, "-m", "branet_pacs.cli", "orthanc", "run", "--data", str(data_dir),
               "--dicom-port", str(dicom_port), "--http-port", str(http_port)]
    for sender in allow_senders:
        command += ["--allow-sender", sender]
    for destination in forward:
        command += ["--forward", destination]
    for option, value in (("--stable-age", stable_age), ("--workers", workers), ("--max-attempts", max_attempts),
                          ("--config", branet_config), ("--template", template), ("--aet", aet)):
        if value is not None:
            command += [option, str(value)]
    return NodeProcess(command=command, data_dir=Path(data_dir), log_path=Path(log_path))


def storescu_groups(files: Iterable[Path]) -> list[tuple[str | None, list[Path]]]:
    """Files grouped by the storescu option their transfer syntax needs (None: the default proposal)."""
    import pydicom

    groups: dict[str | None, list[Path]] = {}
    for path in files:
        try:
            ts = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        except Exception:  # noqa: BLE001 - not readable here: let storescu say what it thinks of it
            ts = ""
        groups.setdefault(STORESCU_TS_OPTION.get(ts), []).append(Path(path))
    return list(groups.items())


def send_files(files: Iterable[Path], port: int, called_aet: str, calling_aet: str, host: str = "127.0.0.1",
               check: bool = True) -> list[subprocess.CompletedProcess]:
    """C-STORE the files with dcmtk's storescu (one association per transfer-syntax group)."""
    results = []
    for option, group in storescu_groups(files):
        command = [dcmtk_executable("storescu"), "-aet", calling_aet, "-aec", called_aet, *([option] if option else []),
                   host, str(port), *map(str, group)]
        result = subprocess.run(command, capture_output=True, text=True)
        if check and (result.returncode != 0 or "E:" in result.stderr):
            raise RuntimeError(f"storescu failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
        results.append(result)
    return results
