"""A DICOM archive over DIMSE (pynetdicom): study-root C-FIND to list, C-MOVE or C-GET to retrieve, C-STORE to
store back, C-ECHO to check.

C-MOVE needs a storage SCP of ours that the archive knows by AE title (`ConnectionOptions.receive_aet`, host and
`receive_port`); it runs in this process while the archive is open and accepts instances only of the study being
retrieved at that moment. C-GET needs no archive configuration: the instances come back on our own association.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, build_role, evt
from pynetdicom import sop_class as sc
from pynetdicom.association import Association

from branet_pacs.reanalysis.archive import (
    SERIES_RETURN_KEYS,
    STUDY_RETURN_KEYS,
    ArchiveError,
    ArchiveUnreachable,
    ConnectionOptions,
    DimseAddress,
    SeriesInfo,
    StudyQuery,
    StudyRef,
    series_info,
    study_ref,
)

log = logging.getLogger(__name__)

FIND = sc.StudyRootQueryRetrieveInformationModelFind
MOVE = sc.StudyRootQueryRetrieveInformationModelMove
GET = sc.StudyRootQueryRetrieveInformationModelGet

# Storage SOP classes asked for on a C-GET association (one presentation context each, all transfer syntaxes):
# what breast image series hold. Ingest decides later which of them are analysed.
IMAGE_STORAGE = (
    sc.DigitalMammographyXRayImageStorageForPresentation, sc.DigitalMammographyXRayImageStorageForProcessing,
    sc.BreastTomosynthesisImageStorage, sc.BreastProjectionXRayImageStorageForPresentation,
    sc.BreastProjectionXRayImageStorageForProcessing, sc.UltrasoundImageStorage,
    sc.UltrasoundMultiFrameImageStorage, sc.DigitalXRayImageStorageForPresentation,
    sc.DigitalXRayImageStorageForProcessing, sc.ComputedRadiographyImageStorage, sc.SecondaryCaptureImageStorage,
    sc.MultiFrameGrayscaleByteSecondaryCaptureImageStorage, sc.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    sc.MultiFrameTrueColorSecondaryCaptureImageStorage,
)
_OK_STORE = {0x0000, 0xB000, 0xB006, 0xB007}     # success and the C-STORE warnings (PS3.4 B.2.3)
_PENDING = {0xFF00, 0xFF01}


def _status(ds: Dataset | None) -> int | None:
    return None if ds is None or "Status" not in ds else int(ds.Status)


def probe(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection to host:port opens, else the reason in a few words."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror as exc:
        return f"host name not resolved ({exc.strerror or exc})"
    except ConnectionRefusedError:
        return "connection refused"
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)


class DimseArchive:
    """An archive reached over DIMSE as SCU (and as storage SCP for C-MOVE)."""

    def __init__(self, address: DimseAddress, options: ConnectionOptions, url: str) -> None:
        self.address = address
        self.options = options
        self.url = url
        self._server = None
        self._target: tuple[str, Path, list[Path]] | None = None   # study being retrieved, folder, files
        self._target_lock = threading.Lock()

    # --- associations ------------------------------------------------------------------------------------------
    def _ae(self) -> AE:
        ae = AE(ae_title=self.options.calling_aet)
        for timeout in ("acse_timeout", "dimse_timeout", "network_timeout"):
            setattr(ae, timeout, self.options.timeout)
        ae.connection_timeout = min(self.options.timeout, 15.0)
        return ae

    def _associate(self, ae: AE, what: str, **kwargs) -> Association:
        a = self.address
        assoc = ae.associate(a.host, a.port, ae_title=a.called_aet, **kwargs)
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            raise ArchiveUnreachable(
                f"cannot reach {self.url}: association rejected (is our AE title '{self.options.calling_aet}' known "
                f"to {a.called_aet}, and is the called AE title right?)")
        reason = probe(a.host, a.port, min(self.options.timeout, 15.0))
        if reason:
            raise ArchiveUnreachable(f"cannot reach {self.url}: {reason}")
        raise ArchiveUnreachable(f"cannot reach {self.url}: association for {what} aborted or refused")

    def check(self) -> None:
        reason = probe(self.address.host, self.address.port, min(self.options.timeout, 15.0))
        if reason:
            raise ArchiveUnreachable(f"cannot reach {self.url}: {reason}")
        ae = self._ae()
        ae.add_requested_context(sc.Verification)
        ae.add_requested_context(FIND)
        assoc = self._associate(ae, "C-ECHO")
        try:
            if not any(cx.abstract_syntax == FIND for cx in assoc.accepted_contexts):
                raise ArchiveUnreachable(f"cannot use {self.url}: it does not accept Study Root C-FIND from us")
            status = _status(assoc.send_c_echo())
            if status != 0x0000:
                raise ArchiveUnreachable(f"cannot reach {self.url}: C-ECHO answered {status!r}")
        finally:
            if assoc.is_established:
                assoc.release()
        # Many archives accept any association and C-ECHO but refuse queries from unknown AE titles: ask one.
        probe_query = Dataset()
        probe_query.QueryRetrieveLevel = "STUDY"
        probe_query.StudyInstanceUID = generate_uid(entropy_srcs=["branet reanalyze connection check"])
        try:
            for _ in self._find(probe_query):
                pass
        except ArchiveError as exc:
            raise ArchiveUnreachable(
                f"cannot use {self.url}: a test C-FIND was refused ({exc.args[0].split(': ', 1)[-1]}); is our AE "
                f"title '{self.options.calling_aet}' allowed to query {self.address.called_aet}?") from exc

    # --- query -------------------------------------------------------------------------------------------------
    def _find(self, identifier: Dataset) -> Iterator[Dataset]:
        ae = self._ae()
        ae.add_requested_context(FIND)
        assoc = self._associate(ae, "C-FIND")
        try:
            for status, answer in assoc.send_c_find(identifier, FIND):
                code = _status(status)
                if code in _PENDING and answer is not None:
                    yield answer
                elif code is None:
                    raise ArchiveError(f"{self.url}: C-FIND ended without a status (association lost)")
                elif code != 0x0000:
                    raise ArchiveError(f"{self.url}: C-FIND failed with status 0x{code:04X}")
        finally:
            if assoc.is_established:
                assoc.release()

    def iter_studies(self, query: StudyQuery) -> Iterator[StudyRef]:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        for keyword in STUDY_RETURN_KEYS:
            setattr(identifier, keyword, "")
        for keyword, value in query.archive_keys().items():
            setattr(identifier, keyword, value)
        for answer in self._find(identifier):
            ref = study_ref(answer)
            if ref is not None and query.accepts(ref):
                yield ref

    def series(self, study_uid: str) -> list[SeriesInfo]:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        for keyword in SERIES_RETURN_KEYS:
            setattr(identifier, keyword, "")
        identifier.StudyInstanceUID = study_uid
        return [info for info in map(series_info, self._find(identifier)) if info is not None]

    # --- retrieve ----------------------------------------------------------------------------------------------
    def retrieve(self, study_uid: str, series_uids: Sequence[str], into: Path) -> list[Path]:
        into.mkdir(parents=True, exist_ok=True)
        files: list[Path] = []
        with self._target_lock:
            self._target = (study_uid, into, files)
        try:
            if self.options.retrieve == "get":
                self._get(study_uid, series_uids)
            else:
                self._ensure_server()
                self._move(study_uid, series_uids)
        finally:
            with self._target_lock:
                self._target = None
        return sorted(set(files))

    def _identifier(self, study_uid: str, series_uid: str) -> Dataset:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID = study_uid
        identifier.SeriesInstanceUID = series_uid
        return identifier

    def _check_retrieve(self, what: str, responses: Iterator[tuple[Dataset, Dataset | None]]) -> None:
        final = None
        for status, _ in responses:
            code = _status(status)
            if code is None:
                raise ArchiveError(f"{self.url}: {what} ended without a status (association lost)")
            if code not in _PENDING:
                final = status
        code = _status(final)
        if code == 0x0000:
            return
        failed = int(final.get("NumberOfFailedSuboperations", 0) or 0) if final is not None else 0
        if code == 0xA801:
            raise ArchiveError(f"{self.url}: {what} refused: move destination '{self.options.move_destination}' "
                               "unknown to the archive")
        raise ArchiveError(f"{self.url}: {what} ended with status 0x{code:04X} ({failed} failed sub-operations)")

    def _move(self, study_uid: str, series_uids: Sequence[str]) -> None:
        ae = self._ae()
        ae.add_requested_context(MOVE)
        assoc = self._associate(ae, "C-MOVE")
        try:
            for series_uid in series_uids:
                self._check_retrieve("C-MOVE", assoc.send_c_move(
                    self._identifier(study_uid, series_uid), self.options.move_destination, MOVE))
        finally:
            if assoc.is_established:
                assoc.release()

    def _get(self, study_uid: str, series_uids: Sequence[str]) -> None:
        ae = self._ae()
        ae.add_requested_context(GET)
        for uid in IMAGE_STORAGE:
            ae.add_requested_context(uid, ALL_TRANSFER_SYNTAXES)
        roles = [build_role(uid, scp_role=True) for uid in IMAGE_STORAGE]
        assoc = self._associate(ae, "C-GET", ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        try:
            for series_uid in series_uids:
                self._check_retrieve("C-GET", assoc.send_c_get(self._identifier(study_uid, series_uid), GET))
        finally:
            if assoc.is_established:
                assoc.release()

    def _on_store(self, event) -> int:
        """Write an incoming instance of the study being retrieved; refuse anything else (0xCxxx: cannot understand)."""
        with self._target_lock:
            target = self._target
        try:
            ds = event.dataset
            study_uid = str(ds.StudyInstanceUID)
            sop_uid = str(ds.SOPInstanceUID)
        except Exception:  # noqa: BLE001 - a dataset we cannot read is refused, whatever pydicom raised
            return 0xC210   # cannot understand
        if target is None or study_uid != target[0]:
            log.warning("refused an instance of study %s: no retrieve of that study is running", study_uid)
            return 0xC211   # refused: not expected now
        path = target[1] / f"{sop_uid}.dcm"
        path.write_bytes(event.encoded_dataset(include_meta=True))
        with self._target_lock:
            target[2].append(path)
        return 0x0000

    def _ensure_server(self) -> None:
        if self._server is not None:
            return
        ae = AE(ae_title=self.options.move_destination)
        ae.network_timeout = self.options.timeout
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(sc.Verification)   # archives C-ECHO their move destinations
        try:
            self._server = ae.start_server(("", self.options.receive_port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        except OSError as exc:
            raise ArchiveUnreachable(
                f"cannot receive C-MOVE from {self.url}: port {self.options.receive_port} is not free "
                f"({exc.strerror or exc}); pick another with --receive-port or use --retrieve get") from exc

    # --- store -------------------------------------------------------------------------------------------------
    def store(self, files: Sequence[Path]) -> None:
        if not files:
            return
        datasets = [pydicom.dcmread(path) for path in files]   # our own small SEG/SR files
        ae = self._ae()
        for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
            syntaxes = {str(ds.file_meta.TransferSyntaxUID) for ds in datasets if ds.SOPClassUID == sop_class}
            if not any(UID(ts).is_compressed for ts in syntaxes):
                syntaxes |= {ExplicitVRLittleEndian, ImplicitVRLittleEndian}   # pynetdicom converts between these
            ae.add_requested_context(sop_class, sorted(syntaxes))
        assoc = self._associate(ae, "C-STORE")
        failures = []
        try:
            accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
            for ds in datasets:
                if str(ds.SOPClassUID) not in accepted:
                    failures.append(f"{ds.SOPInstanceUID} ({UID(ds.SOPClassUID).name} not accepted)")
                    continue
                code = _status(assoc.send_c_store(ds))
                if code not in _OK_STORE:
                    failures.append(f"{ds.SOPInstanceUID} ({'no answer' if code is None else f'0x{code:04X}'})")
        finally:
            if assoc.is_established:
                assoc.release()
        if failures:
            raise ArchiveError(f"{self.url}: C-STORE refused {len(failures)} of {len(files)}: {', '.join(failures)}")

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
