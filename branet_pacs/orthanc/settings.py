"""Service settings: the "BraNet" section of the Orthanc configuration (template `config/orthanc.json`).

The plugin reads them with `orthanc.GetConfiguration()`, the workers from the generated file; both get the same
`ServiceSettings`. Standard library only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from branet_pacs.orthanc.incoming import IncomingLimits

SECTION = "BraNet"

# Keys of the "BraNet" section a user may set in config/orthanc.json (the rest is written by `generate_config`).
USER_KEYS = {"Workers", "MaxAttempts", "RetryDelay", "StudyTimeout", "PollInterval", "AnalyseExistingStudies",
             "Forward", "AllowedSenders"}
GENERATED_KEYS = {"Repo", "Python", "SitePackages", "StateDirectory", "Credentials", "BraNetConfig", "IncomingLimits",
                  "OhifDirectory"}
FORWARD_KEYS = {"Destinations", "WholeStudy", "RetryDelay", "RetryMaxDelay", "MaxAttempts"}


@dataclass(frozen=True)
class ForwardSettings:
    destinations: tuple[str, ...] = ()     # names of DicomModalities entries that receive SEG + SR
    whole_study: bool = False              # send the whole study instead of BraNet's outputs only
    retry_delay: float = 5.0               # first retry after this many seconds, doubling each time...
    retry_max_delay: float = 300.0         # ...up to this
    max_attempts: int = 100                # then give up (0 = never)


@dataclass(frozen=True)
class ServiceSettings:
    repo: str                              # this repository (the plugin adds it to sys.path)
    python: str                            # interpreter of the venv, runs the workers
    site_packages: str                     # the venv's site-packages (added inside Orthanc with site.addsitedir)
    state_dir: str                         # BraNet's own state: service.sqlite, thumbnails/
    credentials: str                       # credentials.json (mode 0600) the workers authenticate with
    http_port: int
    stable_age: float = 60.0               # Orthanc's StableAge
    branet_config: str = ""                # config/branet.toml (or another) for the pipeline; "" = default
    workers: int = 1
    max_attempts: int = 3                  # attempts per study before it is marked failed
    retry_delay: float = 5.0               # delay before the 2nd attempt, doubling afterwards
    study_timeout: float = 900.0           # a worker busy this long on one study is killed (counts an attempt)
    poll_interval: float = 1.0             # /changes polling period (STABLE_STUDY also wakes the poller)
    analyse_existing_studies: bool = False  # first start on an existing archive: analyse what is already there
    forward: ForwardSettings = field(default_factory=ForwardSettings)
    incoming_limits: IncomingLimits = field(default_factory=IncomingLimits)

    @property
    def store_path(self) -> Path:
        return Path(self.state_dir) / "service.sqlite"

    @property
    def thumbnails_dir(self) -> Path:
        return Path(self.state_dir) / "thumbnails"

    @property
    def lock_path(self) -> Path:
        return Path(self.state_dir) / "service.lock"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @classmethod
    def from_orthanc_config(cls, config: dict[str, Any]) -> "ServiceSettings":
        section = config.get(SECTION)
        if not isinstance(section, dict):
            raise ValueError(f'the Orthanc configuration has no "{SECTION}" section (generate it with '
                             "`branet orthanc run`)")
        check_section(section, generated=True)
        forward = section.get("Forward", {})
        missing = sorted(GENERATED_KEYS - {"BraNetConfig", "IncomingLimits", "OhifDirectory"} - set(section))
        if missing:
            raise ValueError(f'"{SECTION}" section lacks {missing} (generate it with `branet orthanc run`)')
        return cls(
            repo=section["Repo"], python=section["Python"], site_packages=section["SitePackages"],
            state_dir=section["StateDirectory"], credentials=section["Credentials"],
            http_port=int(config.get("HttpPort", 8042)), stable_age=float(config.get("StableAge", 60)),
            branet_config=section.get("BraNetConfig", ""),
            workers=int(section.get("Workers", 1)), max_attempts=int(section.get("MaxAttempts", 3)),
            retry_delay=float(section.get("RetryDelay", 5.0)),
            study_timeout=float(section.get("StudyTimeout", 900.0)),
            poll_interval=float(section.get("PollInterval", 1.0)),
            analyse_existing_studies=bool(section.get("AnalyseExistingStudies", False)),
            forward=ForwardSettings(
                destinations=tuple(forward.get("Destinations", ())),
                whole_study=bool(forward.get("WholeStudy", False)),
                retry_delay=float(forward.get("RetryDelay", 5.0)),
                retry_max_delay=float(forward.get("RetryMaxDelay", 300.0)),
                max_attempts=int(forward.get("MaxAttempts", 100))),
            incoming_limits=IncomingLimits(**{k: int(v) for k, v in section.get("IncomingLimits", {}).items()}))

    @classmethod
    def from_file(cls, path: str | Path) -> "ServiceSettings":
        return cls.from_orthanc_config(json.loads(Path(path).read_text(encoding="utf-8")))


def check_section(section: dict[str, Any], generated: bool = False) -> None:
    """Reject misspelt keys (a typo must not silently fall back to a default)."""
    allowed = USER_KEYS | (GENERATED_KEYS if generated else set())
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ValueError(f'unknown key(s) {unknown} in the "{SECTION}" section (known: {sorted(allowed)})')
    forward = section.get("Forward", {})
    if not isinstance(forward, dict):
        raise ValueError(f'"{SECTION}"."Forward" must be an object')
    unknown = sorted(set(forward) - FORWARD_KEYS)
    if unknown:
        raise ValueError(f'unknown key(s) {unknown} in "{SECTION}"."Forward" (known: {sorted(FORWARD_KEYS)})')
    if int(section.get("Workers", 1)) < 1:
        raise ValueError(f'"{SECTION}"."Workers" must be at least 1')
    if int(section.get("MaxAttempts", 3)) < 1:
        raise ValueError(f'"{SECTION}"."MaxAttempts" must be at least 1')
