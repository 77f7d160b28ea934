"""A DICOM archive over DICOMweb (dicomweb-client): QIDO-RS to list, WADO-RS to retrieve, STOW-RS to store back.

Authentication: HTTP basic (user and password from the URL, the options or $BRANET_PACS_USER /
$BRANET_PACS_PASSWORD) or a bearer token ($BRANET_PACS_TOKEN). Study lists are read page by page.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass
from pydicom.dataset import Dataset

from branet_pacs.reanalysis.archive import (
    SERIES_RETURN_KEYS,
    STUDY_RETURN_KEYS,
    ArchiveError,
    ArchiveUnreachable,
    ConnectionOptions,
    DicomWebAddress,
    SeriesInfo,
    StudyQuery,
    StudyRef,
    credentials,
    series_info,
    study_ref,
)

PAGE_SIZE = 200          # studies per QIDO-RS request
STORE_BATCH = 16         # instances per STOW-RS request
RETRY_ATTEMPTS = 3       # attempts per request once the archive has answered (1 s, 2 s back-off)
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)   # WADO-RS: send instances as stored, no transcoding


def network_cause(exc: BaseException) -> str:
    """A few words on why a request failed (connection refused, name not resolved, timeout, HTTP status)."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        hint = {401: "authentication failed", 403: "access forbidden", 404: "no DICOMweb service at this path"}
        return f"HTTP {code}" + (f" ({hint[code]})" if code in hint else "")
    if isinstance(exc, requests.Timeout):
        return "no answer in time"
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, socket.gaierror):
            return "host name not resolved"
        for arg in getattr(current, "args", ()):
            if isinstance(arg, BaseException):
                if isinstance(arg, ConnectionRefusedError) or "Connection refused" in str(arg):
                    return "connection refused"
                if "Name or service not known" in str(arg) or "nodename nor servname" in str(arg):
                    return "host name not resolved"
        current = current.__cause__ or current.__context__ or getattr(current, "reason", None)
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


class DicomWebArchive:
    """An archive reached over DICOMweb."""

    def __init__(self, address: DicomWebAddress, options: ConnectionOptions, url: str) -> None:
        self.address = address
        self.options = options
        self.url = url
        user, password, token = credentials(address, options)
        session = create_session_from_user_pass(user, password) if user else requests.Session()
        self._session = session
        headers = {"Authorization": f"Bearer {token}"} if token and not user else None
        self.client = DICOMwebClient(address.base_url, session=session, headers=headers, timeout=options.timeout)

    def _call(self, what: str, function, *args, **kwargs):
        """Run one client call; network failures become ArchiveUnreachable, HTTP errors ArchiveError."""
        try:
            return function(*args, **kwargs)
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            error = ArchiveUnreachable if code in (401, 403) else ArchiveError
            raise error(f"{self.url}: {what} failed: {network_cause(exc)}") from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise ArchiveUnreachable(f"cannot reach {self.url}: {network_cause(exc)}") from exc

    def check(self) -> None:
        # No retries here (dicomweb-client retries any exception with exponential back-off, ~30 s for a refused
        # connection): an archive that is down at the start is reported at once. Later requests do retry.
        self.client.set_http_retry_params(retry=False)
        try:
            self._call("QIDO-RS", self.client.search_for_studies, limit=1, fields=["StudyInstanceUID"])
        except ArchiveUnreachable:
            raise
        except ArchiveError as exc:
            cause = network_cause(exc.__cause__) if exc.__cause__ is not None else str(exc)
            raise ArchiveUnreachable(f"cannot use {self.url}: {cause}") from exc
        finally:
            self.client.set_http_retry_params(retry=True, max_attempts=RETRY_ATTEMPTS)

    def iter_studies(self, query: StudyQuery) -> Iterator[StudyRef]:
        offset = 0
        while True:
            page = self._call("QIDO-RS study search", self.client.search_for_studies,
                              search_filters=query.archive_keys(), fields=list(STUDY_RETURN_KEYS),
                              limit=PAGE_SIZE, offset=offset)
            for item in page:
                ref = study_ref(Dataset.from_json(item))
                if ref is not None and query.accepts(ref):
                    yield ref
            if len(page) < PAGE_SIZE:
                return
            offset += len(page)

    def series(self, study_uid: str) -> list[SeriesInfo]:
        answers = self._call("QIDO-RS series search", self.client.search_for_series, study_uid,
                             fields=list(SERIES_RETURN_KEYS))
        return [info for info in (series_info(Dataset.from_json(a)) for a in answers) if info is not None]

    def retrieve(self, study_uid: str, series_uids: Sequence[str], into: Path) -> list[Path]:
        into.mkdir(parents=True, exist_ok=True)
        files: list[Path] = []
        for series_uid in series_uids:
            instances = self._call("WADO-RS", self.client.iter_series, study_uid, series_uid,
                                   media_types=ANY_TRANSFER_SYNTAX)
            try:
                for ds in instances:
                    path = into / f"{ds.SOPInstanceUID}.dcm"
                    ds.save_as(path, enforce_file_format=True)
                    files.append(path)
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise ArchiveUnreachable(f"cannot reach {self.url}: {network_cause(exc)}") from exc
            except requests.HTTPError as exc:
                raise ArchiveError(f"{self.url}: WADO-RS failed: {network_cause(exc)}") from exc
        return files

    def store(self, files: Sequence[Path]) -> None:
        for start in range(0, len(files), STORE_BATCH):
            datasets = [pydicom.dcmread(path) for path in files[start:start + STORE_BATCH]]
            answer = self._call("STOW-RS", self.client.store_instances, datasets)
            failed = answer.get("FailedSOPSequence") if answer is not None else None
            if failed:
                reasons = ", ".join(f"{item.get('ReferencedSOPInstanceUID', '?')} "
                                    f"(0x{int(item.get('FailureReason', 0)):04X})" for item in failed)
                raise ArchiveError(f"{self.url}: STOW-RS refused {len(failed)} instance(s): {reasons}")

    def close(self) -> None:
        self._session.close()
