"""The vocabulary of the archives re-analysis reads from and writes to (`dimse://`, `dicomweb+http(s)://` and
`folder:` URLs): what an archive is, what it answers, its errors, and how its URL is written.

Every archive answers the same five questions, in the vocabulary of the DICOM Query/Retrieve information model
(PS3.4 Annex C, study root): which studies match (`iter_studies`), which series does a study hold (`series`),
give me these series as files (`retrieve`), take these files (`store`), and are you there (`check`).
The implementations (`dimse`, `dicomweb`, `folder`) build on this module; `archives.open_archive(url)` picks one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

import pydicom

DEFAULT_CALLING_AET = "BRANET"
DEFAULT_RECEIVE_PORT = 11113
DEFAULT_DICOM_PORT = 104
PASSWORD_ENV = "BRANET_PACS_PASSWORD"
USER_ENV = "BRANET_PACS_USER"
TOKEN_ENV = "BRANET_PACS_TOKEN"

# Study-level attributes asked for in every study query (Study Root, PS3.4 C.6.2.1.2).
STUDY_RETURN_KEYS = ("StudyInstanceUID", "StudyDate", "ModalitiesInStudy", "NumberOfStudyRelatedInstances")
# Series-level attributes asked for in every series query; SoftwareVersions carries our model version.
SERIES_RETURN_KEYS = ("SeriesInstanceUID", "Modality", "SeriesDescription", "Manufacturer", "SoftwareVersions",
                      "NumberOfSeriesRelatedInstances")


class ArchiveError(RuntimeError):
    """An archive operation failed (one study's retrieve or store, a rejected query, ...)."""


class ArchiveUnreachable(ArchiveError):
    """The archive cannot be reached or refuses us altogether; re-analysis cannot go on."""


@dataclass(frozen=True)
class ConnectionOptions:
    """How we present ourselves to an archive. Credentials come from the URL, these options or the environment."""

    calling_aet: str = DEFAULT_CALLING_AET     # our AE title for DIMSE associations
    receive_aet: str = ""                      # C-MOVE destination AE title (default: calling_aet)
    receive_port: int = DEFAULT_RECEIVE_PORT   # where our storage SCP listens during C-MOVE
    retrieve: str = "move"                     # "move" (C-MOVE to our storage SCP) or "get" (C-GET)
    username: str = ""                         # DICOMweb basic auth (default: $BRANET_PACS_USER)
    password: str = ""                         # default: $BRANET_PACS_PASSWORD
    token: str = ""                            # DICOMweb bearer token (default: $BRANET_PACS_TOKEN)
    timeout: float = 60.0                      # seconds for one network operation

    def __post_init__(self) -> None:
        if self.retrieve not in ("move", "get"):
            raise ValueError(f"retrieve must be 'move' or 'get', not {self.retrieve!r}")
        for title in (self.calling_aet, self.receive_aet):
            if title and (len(title) > 16 or "\\" in title):
                raise ValueError(f"AE title {title!r} must be at most 16 characters without backslash")

    @property
    def move_destination(self) -> str:
        return self.receive_aet or self.calling_aet


@dataclass(frozen=True)
class StudyQuery:
    """Study-level matching keys (attribute keyword -> DICOM matching value) plus modalities to keep.

    `keys` go to the archive as they are (wildcards and ranges follow PS3.4 C.2.2.2). `modalities` is checked again
    on ModalitiesInStudy as returned, because archives differ in how they match multi-valued attributes.
    """

    keys: dict[str, str] = field(default_factory=dict)
    modalities: tuple[str, ...] = ()

    def archive_keys(self) -> dict[str, str]:
        keys = dict(self.keys)
        if len(self.modalities) == 1 and "ModalitiesInStudy" not in keys:
            keys["ModalitiesInStudy"] = self.modalities[0]
        return keys

    def accepts(self, study: "StudyRef") -> bool:
        return not self.modalities or not study.modalities or bool(set(self.modalities) & set(study.modalities))


@dataclass(frozen=True)
class StudyRef:
    """One study as listed by the archive (no patient attributes are kept)."""

    study_uid: str
    study_date: str = ""
    modalities: tuple[str, ...] = ()
    instances: int | None = None


@dataclass(frozen=True)
class SeriesInfo:
    """One series as listed by the archive."""

    series_uid: str
    modality: str = ""
    description: str = ""
    manufacturer: str = ""
    software_versions: tuple[str, ...] = ()
    instances: int | None = None


class Archive(Protocol):
    url: str   # printable form (credentials removed)

    def check(self) -> None:
        """Raise ArchiveUnreachable (one line: URL and cause) unless the archive answers."""

    def iter_studies(self, query: StudyQuery) -> Iterator[StudyRef]:
        """Matching studies, as the archive sends them (streamed where the transport allows)."""

    def series(self, study_uid: str) -> list[SeriesInfo]:
        """Every series of one study."""

    def retrieve(self, study_uid: str, series_uids: Sequence[str], into: Path) -> list[Path]:
        """The instances of these series as Part 10 files (written under `into` unless they already are files)."""

    def store(self, files: Sequence[Path]) -> None:
        """Store Part 10 files into the archive; raise ArchiveError unless every one was accepted."""

    def close(self) -> None:
        """Release connections and servers."""


# ------------------------------------------------------------------------------------------------------- URLs

@dataclass(frozen=True)
class DimseAddress:
    called_aet: str
    host: str
    port: int


@dataclass(frozen=True)
class DicomWebAddress:
    base_url: str          # http(s)://host[:port]/path, without credentials
    username: str = ""
    password: str = ""


_DIMSE = re.compile(r"^dimse://(?P<aet>[^@/]{1,16})@(?P<host>\[[^\]]+\]|[^:/]+)(?::(?P<port>\d{1,5}))?/?$")


def parse_dimse(url: str) -> DimseAddress:
    match = _DIMSE.match(url)
    if not match:
        raise ValueError(f"{url!r}: expected dimse://AET@host:port (AE title of at most 16 characters)")
    port = int(match["port"] or DEFAULT_DICOM_PORT)
    if not 0 < port < 65536:
        raise ValueError(f"{url!r}: port {port} is out of range")
    return DimseAddress(match["aet"], match["host"].strip("[]"), port)


def parse_dicomweb(url: str) -> DicomWebAddress:
    if not url.startswith(("dicomweb+http://", "dicomweb+https://")):
        raise ValueError(f"{url!r}: expected dicomweb+http://host/path or dicomweb+https://host/path")
    parts = urlsplit(url[len("dicomweb+"):])
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host")
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if parts.port:
        netloc += f":{parts.port}"
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), parts.query, ""))
    return DicomWebAddress(base, unquote(parts.username or ""), unquote(parts.password or ""))


def parse_folder(url: str) -> Path:
    if not url.startswith("folder:") or len(url) == len("folder:"):
        raise ValueError(f"{url!r}: expected folder:DIR")
    return Path(url[len("folder:"):]).expanduser()


def redact(url: str) -> str:
    """The URL without a password (for logs and messages)."""
    if url.startswith("dicomweb+"):
        parts = urlsplit(url)
        if parts.password is not None:
            netloc = parts.netloc.rsplit("@", 1)[1]
            user = f"{parts.username}:***@" if parts.username else ""
            return urlunsplit((parts.scheme, user + netloc, parts.path, parts.query, parts.fragment))
    return url


def validate_url(url: str) -> str:
    """`url` when it is a well-formed archive URL; ValueError (with the accepted forms) otherwise."""
    if url.startswith("dimse://"):
        parse_dimse(url)
    elif url.startswith("dicomweb+"):
        parse_dicomweb(url)
    elif url.startswith("folder:"):
        parse_folder(url)
    else:
        raise ValueError(f"{url!r}: use dimse://AET@host:port, dicomweb+http(s)://host/path or folder:DIR")
    return url


def credentials(address: DicomWebAddress, options: ConnectionOptions) -> tuple[str, str, str]:
    """(user, password, token): the URL's, else the options', else the environment's."""
    user = address.username or options.username or os.environ.get(USER_ENV, "")
    password = address.password or options.password or os.environ.get(PASSWORD_ENV, "")
    token = options.token or os.environ.get(TOKEN_ENV, "")
    return user, password, token


# ----------------------------------------------------------------------------------------------- datasets -> values

def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None or value == "":
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


def _values(ds: pydicom.Dataset, keyword: str) -> tuple[str, ...]:
    value = ds.get(keyword)
    if value is None or value == "":
        return ()
    if isinstance(value, (pydicom.multival.MultiValue, list, tuple)):
        return tuple(str(v) for v in value if str(v))
    return tuple(v for v in str(value).split("\\") if v)


def _int(ds: pydicom.Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def study_ref(ds: pydicom.Dataset) -> StudyRef | None:
    """A StudyRef from a study-level query answer (None without StudyInstanceUID)."""
    uid = _text(ds, "StudyInstanceUID")
    if not uid:
        return None
    return StudyRef(uid, _text(ds, "StudyDate"), tuple(m.upper() for m in _values(ds, "ModalitiesInStudy")),
                    _int(ds, "NumberOfStudyRelatedInstances"))


def series_info(ds: pydicom.Dataset) -> SeriesInfo | None:
    """A SeriesInfo from a series-level query answer or an instance header (None without SeriesInstanceUID)."""
    uid = _text(ds, "SeriesInstanceUID")
    if not uid:
        return None
    return SeriesInfo(uid, _text(ds, "Modality").upper(), _text(ds, "SeriesDescription"), _text(ds, "Manufacturer"),
                      _values(ds, "SoftwareVersions"), _int(ds, "NumberOfSeriesRelatedInstances"))


def date_range(since: str | None, until: str | None) -> str | None:
    """A DICOM DA range matching value ("since-until", "since-", "-until"), None when both are empty."""
    for value in (since, until):
        if value and not re.fullmatch(r"\d{8}", value):
            raise ValueError(f"date {value!r} must be YYYYMMDD")
    if since and until and since > until:
        raise ValueError(f"--since {since} is after --until {until}")
    if not since and not until:
        return None
    return f"{since or ''}-{until or ''}"
