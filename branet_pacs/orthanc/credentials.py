"""Admin credentials for Orthanc's REST API: generated on first start, kept in DIR/credentials.json (mode 0600)."""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_USERNAME = "branet-admin"


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:  # never print the password by accident
        return f"Credentials(username={self.username!r}, password=<hidden>)"


def load_credentials(path: str | Path) -> Credentials:
    values = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(values, dict) or not values.get("username") or not values.get("password"):
        raise ValueError(f"{path}: expected {{\"username\": ..., \"password\": ...}}")
    return Credentials(str(values["username"]), str(values["password"]))


def load_or_create_credentials(path: str | Path, username: str = DEFAULT_USERNAME) -> Credentials:
    """The credentials in `path`; on first use, a random password (256 bits) written with mode 0600.

    The file is created with O_EXCL, so two starts racing on a fresh directory agree on one password.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)  # tighten a copy made with a permissive umask
        for _ in range(50):  # another start may be writing it right now
            if path.stat().st_size:
                break
            time.sleep(0.05)
        return load_credentials(path)
    credentials = Credentials(username, secrets.token_urlsafe(32))
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"username": credentials.username, "password": credentials.password}, handle)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    return credentials
