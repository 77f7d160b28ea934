"""Generate the Orthanc configuration BraNet runs with: template + command-line options + credentials.

`generate_config` writes DIR/orthanc.json (mode 0600: it holds the admin password) from `config/orthanc.json`;
storage and index live under DIR/orthanc-storage, BraNet's own state under DIR/branet. Secure defaults come from
the template and are enforced here again (authentication on, no remote HTTP access, DICOM stores only from
whitelisted AE title + host pairs, called AE title checked, Lua off).
"""

from __future__ import annotations

import json
import os
import re
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from branet_pacs.orthanc.credentials import Credentials, load_or_create_credentials
from branet_pacs.orthanc.settings import SECTION, check_section
from branet_pacs.orthanc.status import USER_METADATA
from branet_pacs.orthanc.viewer import default_dist

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE = REPO_ROOT / "config" / "orthanc.json"
PLUGIN_SCRIPT = REPO_ROOT / "orthanc_plugin" / "branet_plugin.py"
PYTHON_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPython.so")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")   # Debian orthanc-dicomweb: for OHIF
# Orthanc's DICOMweb server (QIDO-RS/WADO-RS/STOW-RS at /dicom-web/), behind the same authentication as the REST API
DICOMWEB_SETTINGS = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado",
                     "Ssl": False, "StudiesMetadata": "Full", "SeriesMetadata": "Full"}
ORTHANC_BINARY = Path("/usr/sbin/Orthanc")

# Always enforced, whatever the template says (the template documents them; this makes them non-negotiable).
SECURE_SETTINGS = {
    "AuthenticationEnabled": True,
    "RemoteAccessAllowed": False,
    "DicomAlwaysAllowStore": False,
    "DicomCheckCalledAet": True,
    "StrictAetComparison": True,      # AE titles are case-sensitive: "rel" is not the whitelisted "REL"
    "DicomCheckModalityHost": True,
    "DicomModalitiesInDatabase": False,
    "ExecuteLuaEnabled": False,
    "LuaScripts": [],
    "DeidentifyLogs": True,
}

from branet_pacs.orthanc.viewer import default_dist  # noqa: E402 - after the constants it sits with

AET_PATTERN = re.compile(r"^[ -~]{1,16}$")
_ENDPOINT = re.compile(r"^(?P<aet>[^@]+)@(?P<host>[^:@]+)(?::(?P<port>\d+))?$")

@dataclass(frozen=True)
class DicomNode:
    """An AE title at a host (and port) — a sender we accept or a destination we forward to."""

    aet: str
    host: str
    port: int = 104

    @classmethod
    def parse(cls, text: str) -> "DicomNode":
        """`AET@HOST` or `AET@HOST:PORT`."""
        match = _ENDPOINT.match(text.strip())
        if not match:
            raise ValueError(f"expected AET@HOST or AET@HOST:PORT, got {text!r}")
        aet = match["aet"]
        if not AET_PATTERN.match(aet) or aet != aet.strip() or "\\" in aet:
            raise ValueError(f"invalid AE title {aet!r} (1-16 printable characters, no backslash)")
        port = int(match["port"]) if match["port"] else 104
        if not 0 < port < 65536:
            raise ValueError(f"invalid port in {text!r}")
        return cls(aet, match["host"], port)

def parse_destination(text: str) -> tuple[str, DicomNode | None]:
    """`NAME=AET@HOST:PORT` (a new modality) or `NAME` (a modality already in the template)."""
    name, sep, node = text.partition("=")
    name = name.strip()
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"invalid destination name {name!r} (letters, digits, '_', '.', '-')")
    return name, DicomNode.parse(node) if sep else None

@dataclass(frozen=True)
class RunOptions:
    """What `branet orthanc run` was asked for; None keeps the template's value."""

    data_dir: Path = Path("var")
    dicom_port: int | None = None
    http_port: int | None = None
    allow_senders: tuple[str, ...] = ()        # AET@HOST[:PORT]
    forward: tuple[str, ...] = ()              # NAME=AET@HOST:PORT or NAME
    forward_whole_study: bool | None = None
    stable_age: int | None = None
    workers: int | None = None
    aet: str | None = None
    name: str | None = None
    branet_config: Path | None = None          # config/branet.toml for the pipeline
    template: Path = DEFAULT_TEMPLATE
    overrides: dict[str, Any] = field(default_factory=dict)   # "BraNet" keys, e.g. {"MaxAttempts": 2}

@dataclass(frozen=True)
class GeneratedConfig:
    path: Path                  # DIR/orthanc.json
    config: dict[str, Any]
    credentials: Credentials
    credentials_path: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.config['HttpPort']}"

    @property
    def explorer_url(self) -> str:
        return f"{self.http_url}/app/explorer.html"

def _site_packages() -> str:
    return sysconfig.get_paths()["purelib"]

def _modality(node: DicomNode, allow_store: bool) -> dict[str, Any]:
    return {"AET": node.aet, "Host": node.host, "Port": node.port, "AllowEcho": allow_store,
            "AllowStore": allow_store, "AllowFind": False, "AllowMove": False, "AllowGet": False,
            "AllowStorageCommitment": False}

def build_config(options: RunOptions, credentials: Credentials, credentials_path: Path) -> dict[str, Any]:
    """The Orthanc configuration as a dict (no file written)."""
    config: dict[str, Any] = json.loads(Path(options.template).read_text(encoding="utf-8"))
    section = dict(config.get(SECTION, {}))
    check_section(section)
    section.update(options.overrides)
    check_section(section)
    data_dir = Path(options.data_dir).resolve()

    if options.dicom_port is not None:
        config["DicomPort"] = options.dicom_port
    if options.http_port is not None:
        config["HttpPort"] = options.http_port
    if options.stable_age is not None:
        config["StableAge"] = int(options.stable_age)
    if options.aet:
        config["DicomAet"] = options.aet
    if options.name:
        config["Name"] = options.name
    if options.workers is not None:
        section["Workers"] = int(options.workers)
    if not AET_PATTERN.match(config.get("DicomAet", "")):
        raise ValueError(f"invalid DicomAet {config.get('DicomAet')!r}")

    modalities: dict[str, Any] = dict(config.get("DicomModalities", {}))
    senders = list(section.pop("AllowedSenders", [])) + list(options.allow_senders)
    for index, text in enumerate(dict.fromkeys(senders), start=1):
        node = DicomNode.parse(text)
        modalities[f"sender-{index}-{re.sub(r'[^A-Za-z0-9]', '', node.aet).lower() or 'aet'}"] = \
            _modality(node, allow_store=True)

    forward = dict(section.get("Forward", {}))
    destinations = list(forward.get("Destinations", []))
    for text in options.forward:
        name, node = parse_destination(text)
        if node is not None:
            modalities[name] = _modality(node, allow_store=False)
        if name not in destinations:
            destinations.append(name)
    unknown = [d for d in destinations if d not in modalities]
    if unknown:
        raise ValueError(f"forwarding destination(s) {unknown} are not DICOM modalities (use NAME=AET@HOST:PORT)")
    forward["Destinations"] = destinations
    if options.forward_whole_study is not None:
        forward["WholeStudy"] = options.forward_whole_study
    section["Forward"] = forward

    storage = data_dir / "orthanc-storage"
    config.update({
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "Plugins": [str(PYTHON_PLUGIN)] + ([str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.is_file() else []),
        "DicomWeb": {**DICOMWEB_SETTINGS, **config.get("DicomWeb", {})},
        "PythonScript": str(PLUGIN_SCRIPT),
        "PythonVerbose": False,
        "DicomModalities": modalities,
        "RegisteredUsers": {credentials.username: credentials.password},
        "UserMetadata": {**config.get("UserMetadata", {}), **USER_METADATA},
    })
    config.update(SECURE_SETTINGS)
    section.update({
        "Repo": str(REPO_ROOT),
        "OhifDirectory": str(default_dist(REPO_ROOT)),
        "Python": sys.executable,
        "SitePackages": _site_packages(),
        "StateDirectory": str(data_dir / "branet"),
        "Credentials": str(credentials_path),
        "BraNetConfig": str(Path(options.branet_config).resolve()) if options.branet_config else "",
        "IncomingLimits": _incoming_limits(options.branet_config),
    })
    config[SECTION] = section
    return config

def _incoming_limits(branet_config: str | None) -> dict[str, int]:
    """The pipeline's ingest size limits, for the plugin's C-STORE filter (the same numbers refuse the same files)."""
    from branet_pacs.config import load_config

    ingest = load_config(branet_config or None).ingest
    return {"max_input_bytes": ingest.max_input_bytes, "max_frame_pixels": ingest.max_frame_pixels,
            "max_instance_frames": ingest.max_instance_frames}

def generate_config(options: RunOptions) -> GeneratedConfig:
    """Write DIR/orthanc.json (0600) and create DIR/credentials.json on first start."""
    data_dir = Path(options.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    credentials_path = data_dir / "credentials.json"
    credentials = load_or_create_credentials(credentials_path)
    config = build_config(options, credentials, credentials_path)
    (data_dir / "orthanc-storage").mkdir(exist_ok=True)
    (data_dir / "branet").mkdir(exist_ok=True)
    path = data_dir / "orthanc.json"
    tmp = path.with_suffix(".json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2)
        handle.write("\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return GeneratedConfig(path=path, config=config, credentials=credentials, credentials_path=credentials_path)
