"""The model manifest, `models/manifest.json`: which weights exist, for what, and their checksums.

Layout: ``{"models": [entry, ...]}``, entries sorted by name; each entry is a `ModelEntry`. Weights are found
through the manifest only and are used only when their SHA-256 matches, so a pipeline never runs on a file it
did not expect (and never on random weights).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from branet_pacs.models.errors import ModelUnavailable

MANIFEST_NAME = "manifest.json"
KINDS = ("classifier", "detector")
MODALITIES = ("US", "MG")


@dataclass(frozen=True)
class ModelEntry:
    """One shipped model. `file` is relative to the models directory."""

    name: str                        # unique, e.g. "us-resnet18"
    kind: str                        # "classifier" | "detector"
    modality: str                    # "US" | "MG"
    version: str                     # written into every output object
    file: str                        # e.g. "us-resnet18/weights.safetensors"
    sha256: str                      # hex digest of `file`
    threshold: float | None = None   # decision threshold on the model's score (classifiers: p(malignant))
    input: dict[str, Any] = field(default_factory=dict)   # input spec, e.g. {"size": 128, "range": [-1, 1]}
    extra: dict[str, Any] = field(default_factory=dict)   # anything else, e.g. {"tta": true, "dropout": 0.5}

    def __post_init__(self) -> None:
        problems = []
        if not self.name or not isinstance(self.name, str):
            problems.append("empty name")
        if self.kind not in KINDS:
            problems.append(f"kind '{self.kind}' is not one of {', '.join(KINDS)}")
        if self.modality not in MODALITIES:
            problems.append(f"modality '{self.modality}' is not one of {', '.join(MODALITIES)}")
        if not self.version:
            problems.append("empty version")
        if not self.file or Path(self.file).is_absolute() or ".." in Path(self.file).parts:
            problems.append(f"file '{self.file}' must be a path inside the models directory")
        if not re.fullmatch(r"[0-9a-f]{64}", str(self.sha256)):
            problems.append("sha256 must be 64 lowercase hex digits")
        if self.threshold is not None and not isinstance(self.threshold, (int, float)):
            problems.append("threshold must be a number or null")
        if problems:
            raise ValueError(f"invalid model entry '{self.name}': " + "; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "ModelEntry":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown} in model entry (put extra information under 'extra')")
        missing = sorted({"name", "kind", "modality", "version", "file", "sha256"} - set(values))
        if missing:
            raise ValueError(f"model entry {values.get('name', '?')!r} lacks {missing}")
        values = dict(values)
        if values.get("threshold") is not None:
            values["threshold"] = float(values["threshold"])
        return cls(**values)


def manifest_path(models_dir: str | Path) -> Path:
    return Path(models_dir) / MANIFEST_NAME


def read_manifest(models_dir: str | Path) -> list[ModelEntry]:
    """All entries of `models_dir/manifest.json`; [] when the file does not exist; ModelUnavailable when broken."""
    path = manifest_path(models_dir)
    if not path.exists():
        return []
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(document, dict) or not isinstance(document.get("models"), list):
            raise ValueError('expected an object {"models": [...]}')
        entries = [ModelEntry.from_json(item) for item in document["models"]]
    except (ValueError, TypeError) as exc:
        raise ModelUnavailable(f"model manifest {path} is invalid: {exc}") from exc
    names = [entry.name for entry in entries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ModelUnavailable(f"model manifest {path} is invalid: duplicate names {duplicates}")
    return entries


def _version_key(version: str) -> tuple[tuple[int, ...], str]:
    return tuple(int(part) for part in re.findall(r"\d+", version)), version


def find_model(models_dir: str | Path, kind: str, modality: str, name: str | None = None) -> ModelEntry:
    """The entry for (`kind`, `modality`), or the one called `name`; the highest version when several match."""
    modality = modality.upper()
    entries = read_manifest(models_dir)
    if not entries and not manifest_path(models_dir).exists():
        raise ModelUnavailable(
            f"no {kind} for modality {modality}: {manifest_path(models_dir)} does not exist "
            "(train one with `branet train` or check models_dir)")
    matches = [e for e in entries if e.kind == kind and e.modality == modality and (name is None or e.name == name)]
    if not matches:
        available = ", ".join(f"{e.name} ({e.kind}, {e.modality})" for e in entries) or "none"
        wanted = f"'{name}' " if name else ""
        raise ModelUnavailable(
            f"no {kind} {wanted}for modality {modality} in {manifest_path(models_dir)} (available: {available})")
    return max(matches, key=lambda e: (_version_key(e.version), e.name))


_hash_cache: dict[tuple[str, int, int], str] = {}
_hash_lock = threading.Lock()


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (cached per path, size and modification time within this process)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _hash_lock:
        if key in _hash_cache:
            return _hash_cache[key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _hash_lock:
        _hash_cache[key] = value
    return value


def verified_weights_path(models_dir: str | Path, entry: ModelEntry) -> Path:
    """Absolute path of `entry.file`, after checking that it exists and its SHA-256 matches the manifest."""
    root = Path(models_dir).resolve()
    path = (root / entry.file).resolve()
    if not path.is_relative_to(root):
        raise ModelUnavailable(f"model '{entry.name}': file {entry.file} lies outside {root}")
    if not path.is_file():
        raise ModelUnavailable(f"model '{entry.name}' ({entry.kind}, {entry.modality}): weights file {path} is missing")
    actual = file_sha256(path)
    if actual != entry.sha256:
        raise ModelUnavailable(
            f"model '{entry.name}': weights file {path} has SHA-256 {actual}, the manifest expects {entry.sha256} "
            "(file changed or manifest out of date; re-register the model)")
    return path


@contextmanager
def _locked(models_dir: Path) -> Iterator[None]:
    """Serialise read-modify-write of the manifest between processes (e.g. two `branet train` runs)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(models_dir, os.O_RDONLY)  # lock the directory itself: no stray lock file in the repo
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_manifest(models_dir: str | Path, entries: list[ModelEntry]) -> None:
    """Write entries sorted by name, with stable formatting, atomically (temp file + rename)."""
    path = manifest_path(models_dir)
    document = {"models": [e.to_json() for e in sorted(entries, key=lambda e: e.name)]}
    text = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    handle, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def register_model(models_dir: str | Path, entry: ModelEntry) -> None:
    """Add `entry` to the manifest, replacing any entry with the same name."""
    models_dir = Path(models_dir)
    with _locked(models_dir):
        entries = [e for e in read_manifest(models_dir) if e.name != entry.name]
        write_manifest(models_dir, entries + [entry])
