"""A folder of DICOM files treated as an archive (`folder:DIR`): read in place, outputs written to
DIR/<StudyInstanceUID>/<SOPInstanceUID>.dcm.

The folder is indexed once (headers only) on first use; matching follows PS3.4 C.2.2.2 closely enough for
study-level keys: single values, `*`/`?` wildcards, `\\`-separated lists and date ranges.
"""

from __future__ import annotations

import fnmatch
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from branet_pacs.reanalysis.archive import (
    ArchiveError,
    ArchiveUnreachable,
    SeriesInfo,
    StudyQuery,
    StudyRef,
    series_info,
)

log = logging.getLogger(__name__)

_RANGE_VRS = ("DA", "TM", "DT")


@dataclass
class _Series:
    info: SeriesInfo
    files: list[Path] = field(default_factory=list)


@dataclass
class _Study:
    date: str
    first_file: Path
    series: dict[str, _Series] = field(default_factory=dict)

    def ref(self, uid: str) -> StudyRef:
        modalities = tuple(sorted({s.info.modality for s in self.series.values() if s.info.modality}))
        return StudyRef(uid, self.date, modalities, sum(len(s.files) for s in self.series.values()))


def matches(value: object, pattern: str, vr: str = "") -> bool:
    """DICOM attribute matching of one value against a matching key (empty key = universal match)."""
    if pattern in ("", "*"):
        return True
    values = [str(v) for v in value] if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) \
        else [str(value or "")]
    candidates = pattern.split("\\")
    for text in values:
        for candidate in candidates:
            if vr in _RANGE_VRS and "-" in candidate:
                low, _, high = candidate.partition("-")
                if (not low or text >= low) and (not high or text[:len(high)] <= high):
                    return True
            elif fnmatch.fnmatchcase(text, candidate):
                return True
    return False


class FolderArchive:
    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url
        self._studies: dict[str, _Study] | None = None

    def check(self) -> None:
        if not self.root.is_dir():
            raise ArchiveUnreachable(f"cannot use {self.url}: {self.root} is not a folder")

    def _index(self) -> dict[str, _Study]:
        if self._studies is None:
            self.check()
            self._studies = {}
            for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
                self._add(path)
        return self._studies

    def _add(self, path: Path) -> None:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            study_uid = str(header.StudyInstanceUID)
            info = series_info(header)
        except (InvalidDicomError, AttributeError, OSError, ValueError, EOFError) as exc:
            log.debug("not indexed: %s (%s)", path, exc)
            return
        if info is None:
            return
        assert self._studies is not None
        study = self._studies.setdefault(study_uid, _Study(str(header.get("StudyDate", "") or ""), path))
        series = study.series.setdefault(info.series_uid, _Series(info))
        series.files.append(path)
        series.info = SeriesInfo(info.series_uid, info.modality, info.description, info.manufacturer,
                                 info.software_versions, len(series.files))

    def iter_studies(self, query: StudyQuery) -> Iterator[StudyRef]:
        keys = query.archive_keys()
        for uid, study in self._index().items():
            ref = study.ref(uid)
            if not query.accepts(ref):
                continue
            if keys and not self._matches(uid, study, keys):
                continue
            yield ref

    def _matches(self, uid: str, study: _Study, keys: dict[str, str]) -> bool:
        header = pydicom.dcmread(study.first_file, stop_before_pixels=True)
        for keyword, pattern in keys.items():
            if keyword == "ModalitiesInStudy":
                value: object = list(study.ref(uid).modalities)
            elif keyword == "StudyInstanceUID":
                value = uid
            else:
                value = header.get(keyword, "")
            element = header.data_element(keyword) if keyword in header else None
            if not matches(value, pattern, element.VR if element is not None else _vr(keyword)):
                return False
        return True

    def series(self, study_uid: str) -> list[SeriesInfo]:
        study = self._index().get(study_uid)
        return [s.info for s in study.series.values()] if study else []

    def retrieve(self, study_uid: str, series_uids: Sequence[str], into: Path) -> list[Path]:
        study = self._index().get(study_uid)
        if study is None:
            raise ArchiveError(f"{self.url}: study {study_uid} is not in the folder")
        return [path for uid in series_uids if uid in study.series for path in study.series[uid].files]

    def store(self, files: Sequence[Path]) -> None:
        self._index()
        for path in files:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            target = self.root / str(header.StudyInstanceUID) / f"{header.SOPInstanceUID}.dcm"
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                continue   # same SOP Instance UID already stored: keep the first, as archives do by default
            try:
                shutil.copyfile(path, target)
            except OSError as exc:
                raise ArchiveError(f"{self.url}: cannot write {target}: {exc.strerror or exc}") from exc
            self._add(target)

    def close(self) -> None:
        pass


def _vr(keyword: str) -> str:
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    tag = tag_for_keyword(keyword)
    return dictionary_VR(tag) if tag is not None else ""
