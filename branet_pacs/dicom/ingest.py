"""Ingest: decide per DICOM instance whether it is a breast image, and decode it into BreastImage values.

Selection (rules from `IngestRules`, config [ingest]):
  0. an instance without SOP Class, SOP Instance, Study Instance or Series Instance UID is an error naming the
     attribute; one over a size limit (`max_input_bytes`, `max_frame_pixels`, `max_instance_frames`) is an error
     naming the limit, found before anything is decoded;
  1. non-image objects are skipped: a SOP Class that is not an image storage class (SEG, SR, KO, PR, RT, ...),
     a non-image Modality, or no Pixel Data;
  2. `breast_modalities` (MG, US) are analysed whatever their body part, except MG "FOR PROCESSING" (skipped unless
     `accept_for_processing`) and US whose BodyPartExamined names another body part (empty/absent is accepted
     unless `accept_us_without_body_part` is false);
  3. `body_part_modalities` (DX, CR, RG, SC, OT) are analysed, as "MG", only when BodyPartExamined is one of
     `breast_body_parts` (or, when BodyPartExamined is empty, Anatomic Region Sequence codes the breast);
  4. any other modality is skipped. Breast tomosynthesis volumes are skipped (3-D).

Decoding (see `pixels.frame_to_gray`): every frame becomes float32 [0, 1] grayscale. US is cropped to the largest
2-D region of the Sequence of Ultrasound Regions; multi-frame instances give one representative frame
(RepresentativeFrameNumber, else the middle frame) or, with `us_frames = "all"`, the first `max_frames` frames.
MG gets a breast foreground mask (less the pectoral muscle on MLO views: where findings may be) and laterality
(ImageLaterality, else Laterality).

`ingest(source, rules)` is the entry point: `source` is a file path, the bytes of a Part 10 file (C-STORE, REST,
DICOMweb) or an already parsed pydicom Dataset. Nothing raises out of it: unreadable, truncated or undecodable
input is an outcome with status "error" and a reason naming the input and the failure. Log lines carry SOP Instance
UIDs, never patient attributes.
"""

from __future__ import annotations

import copy
import logging
import warnings
import zlib
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from branet_pacs.config import IngestRules
from branet_pacs.dicom.derived import laterality, view_position
from branet_pacs.dicom.pixels import PIXEL_TAGS, PixelDecodeError, frame_to_gray, number_of_frames
from branet_pacs.imaging.breast import detection_region
from branet_pacs.types import Box, BreastImage, IngestOutcome, Status

log = logging.getLogger(__name__)

# What `ingest` accepts: a file path, the bytes of a Part 10 file, or a parsed data set.
Source = str | Path | bytes | Dataset
_UNDEFINED_LENGTH = 0xFFFFFFFF

# Modalities of objects that are never images (PS3.3 C.7.3.1.1.1)
NON_IMAGE_MODALITIES = frozenset({
    "SEG", "SR", "KO", "PR", "DOC", "AU", "ECG", "HD", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "RTION", "REG",
    "FID", "PLAN", "RWV", "SMR", "IOL", "OPM", "OPV", "OPT", "KER", "LEN", "VA", "POS", "M3D", "TEXTUREMAP",
})
# SCT 76752008 Breast; SRT T-04000 Breast (retired SNOMED RT code still written by older devices)
_BREAST_CODES = {("SCT", "76752008"), ("SRT", "T-04000"), ("SNM3", "T-04000")}
_TOMOSYNTHESIS = UID("1.2.840.10008.5.1.4.1.1.13.1.3")   # Breast Tomosynthesis Image Storage
MEDIA_DIRECTORY = UID("1.2.840.10008.1.3.10")        # Media Storage Directory Storage (DICOMDIR)
NOT_DICOM = "not a DICOM file"                         # a file of something else (README, PNG...): skipped
# Without these an output cannot be placed in the study, nor the instance told from another.
REQUIRED_UIDS = (("SOPClassUID", "0008,0016"), ("SOPInstanceUID", "0008,0018"), ("StudyInstanceUID", "0020,000D"),
                 ("SeriesInstanceUID", "0020,000E"))


# ------------------------------------------------------------------------------------------------- entry point

def ingest(source: Source, rules: IngestRules, name: str | None = None) -> IngestOutcome:
    """Read (unless already parsed) and ingest one instance. Never raises for bad input.

    `name` says where the input came from in reasons and reports (default: the path, else "dataset"/"bytes").
    """
    if isinstance(source, Dataset):
        return _ingest_dataset(source, rules, name or "dataset")
    name = name or (str(source) if isinstance(source, (str, Path)) else "bytes")
    try:
        ds, problem = read_dicom(source, rules.max_input_bytes)
    except Exception as exc:  # defensive: read_dicom already turns known failures into messages
        ds, problem = None, f"unreadable: {type(exc).__name__}: {exc}"
    if ds is None:
        status = Status.SKIPPED if problem.startswith(NOT_DICOM) else Status.ERROR
        log.info("ingest %s (input not parsed): %s", status.value, problem)
        return IngestOutcome(name, status, f"{name}: {problem}")
    if problem:
        header = _safe_header(ds)
        log.info("ingest error for SOP %s: %s", _uid(ds), problem)
        return IngestOutcome(name, Status.ERROR, f"{name}: {problem}", dataset=header)
    return _ingest_dataset(ds, rules, name)


def _ingest_dataset(ds: Dataset, rules: IngestRules, source: str) -> IngestOutcome:
    """Outcomes are recorded (results.csv, the node's records): logged at INFO, one line, never a traceback."""
    try:
        outcome = _ingest(ds, rules, source)
    except Exception as exc:  # a malformed attribute somewhere: an error outcome, never a crash
        log.debug("ingest error for SOP %s", _uid(ds), exc_info=True)
        outcome = IngestOutcome(source, Status.ERROR, f"{source}: unexpected {type(exc).__name__}: {exc}",
                                dataset=_safe_header(ds))
    if outcome.status is not Status.OK:
        log.info("ingest %s SOP %s: %s", outcome.status.value, _uid(ds), outcome.reason)
    else:
        log.debug("ingest ok SOP %s: %d image(s)", _uid(ds), len(outcome.images))
    return outcome


# -------------------------------------------------------------------------------------------------------- reading

def read_dicom(source: str | Path | bytes, max_bytes: int | None = None) -> tuple[Dataset | None, str]:
    """(dataset, problem) for a file path or the bytes of a file: problem is "" for a complete file; dataset is
    None when nothing could be parsed.

    Files without the Part 10 preamble are accepted when they parse as a data set with a SOP Class UID.
    Truncation is detected from pydicom's end-of-file warnings and from a last element shorter than its length.
    An input larger than `max_bytes` (a deflated one: once inflated) is not parsed.
    """
    if isinstance(source, bytes):
        if not source:
            return None, "empty input, not DICOM"
        size = len(source)
    else:
        source = Path(source)
        if not source.exists():
            return None, ("symbolic link that cannot be resolved (dangling, or a loop)" if source.is_symlink()
                          else "no such file")
        if not source.is_file():
            return None, "a folder" if source.is_dir() else "not a regular file (device, socket or pipe)"
        size = source.stat().st_size
        if size == 0:
            return None, "empty file, not DICOM"
    if max_bytes is not None:
        if size > max_bytes:
            return None, f"{size} bytes exceed the limit ingest.max_input_bytes = {max_bytes}"
        inflated = _inflated_size(source, max_bytes)
        if inflated is not None and inflated > max_bytes:
            return None, (f"deflated data set inflates to more than {max_bytes} bytes "
                          f"(ingest.max_input_bytes = {max_bytes})")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(_stream(source))
        except InvalidDicomError:
            ds = _read_raw_dataset(_stream(source))
            if ds is None:
                return None, f"{NOT_DICOM} (no 'DICM' prefix and not a parsable data set)"
        except Exception as exc:
            return None, f"unreadable DICOM file: {type(exc).__name__}: {exc}"
    eof = [str(w.message) for w in caught if "end of file" in str(w.message).lower()]
    if eof:
        return ds, f"truncated file: {eof[0]}"
    short = _short_last_element(ds)
    if short:
        return ds, f"truncated file: {short}"
    _ensure_transfer_syntax(ds)
    return ds, ""


INFLATE_STEP = 16 << 20   # bytes inflated at a time while measuring (what measuring costs in memory)


def _inflated_size(source: Path | bytes, limit: int) -> int | None:
    """For a Deflated Explicit VR Little Endian file, how large its data set inflates (counting stops just past
    `limit`; a zip bomb costs INFLATE_STEP of memory at a time); None for any other transfer syntax."""
    try:
        with open(source, "rb") if isinstance(source, Path) else BytesIO(source) as handle:
            if pydicom.filereader.read_preamble(handle, force=True) is None:
                return None                      # no Part 10 header: not a deflated file
            meta = pydicom.filereader._read_file_meta_info(handle)   # pydicom's reader of group 0002
            if str(meta.get("TransferSyntaxUID", "")) != DeflatedExplicitVRLittleEndian:
                return None
            inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
            while chunk := handle.read(1 << 20):
                while chunk and total <= limit:
                    total += len(inflater.decompress(chunk, INFLATE_STEP))
                    chunk = inflater.unconsumed_tail
                if total > limit:
                    return total
            return total
    except Exception:  # not a Part 10 file, or a damaged stream: parsing reports what is wrong
        return None


def _stream(source: Path | bytes) -> Path | BytesIO:
    """What pydicom reads: the path, or a fresh stream over the bytes (each read attempt starts at 0)."""
    return BytesIO(source) if isinstance(source, bytes) else source


def _read_raw_dataset(source: Path | BytesIO) -> Dataset | None:
    """A data set without Part 10 header (old exports); None unless it looks like a real instance."""
    try:
        ds = pydicom.dcmread(source, force=True)
        sop_class = str(ds.get("SOPClassUID", ""))
        sop_instance = str(ds.get("SOPInstanceUID", ""))
    except Exception:
        return None
    if not (UID(sop_class).is_valid and UID(sop_instance).is_valid):
        return None
    return ds


def _short_last_element(ds: Dataset) -> str:
    """Description of a top-level element whose value is shorter than its declared length, or ""."""
    for tag in reversed(list(ds.keys())):
        raw = ds.get_item(tag)
        if isinstance(raw, RawDataElement) and raw.length not in (0, _UNDEFINED_LENGTH) and raw.value is not None \
                and len(raw.value) < raw.length:
            return f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) has {len(raw.value)} of {raw.length} bytes"
        return ""
    return ""


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Decoders need file_meta.TransferSyntaxUID: infer it from how a raw data set was read."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))[:2]
    if implicit is None:
        ts = ExplicitVRLittleEndian
    elif implicit:
        ts = ImplicitVRLittleEndian
    else:
        ts = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    if meta is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts


# ------------------------------------------------------------------------------------------------------ selection

def _ingest(ds: Dataset, rules: IngestRules, source: str) -> IngestOutcome:
    header = header_only(ds)
    if _is_media_directory(ds):
        return IngestOutcome(source, Status.SKIPPED, "DICOMDIR (a media directory, not an image): the files it "
                                                     "lists are inputs of their own", dataset=header)
    problem = missing_uids(ds) or over_limits(ds, rules)
    if problem:
        return IngestOutcome(source, Status.ERROR, f"{source}: {problem}", dataset=header)
    selection = select(ds, rules)
    if selection.kind is None:
        reason = f"{source}: {selection.reason}" if selection.status is Status.ERROR else selection.reason
        return IngestOutcome(source, selection.status, reason, dataset=header)
    kind = selection.kind
    if rules.us_frames not in ("representative", "all"):
        return IngestOutcome(source, Status.ERROR, f"ingest.us_frames must be 'representative' or 'all', "
                                                   f"not {rules.us_frames!r}", dataset=header)
    if getattr(ds, "file_meta", None) is None or "TransferSyntaxUID" not in ds.file_meta:
        ds = copy.copy(ds)
        _ensure_transfer_syntax(ds)

    slope = _number(ds.get("RescaleSlope"))
    if slope == 0.0:
        return IngestOutcome(source, Status.ERROR, f"{source}: RescaleSlope (0028,1053) is 0: every stored value "
                                                   "maps to the same value, there is no image", dataset=header)
    images = []
    frames = number_of_frames(ds)
    for index in select_frames(ds, kind, rules):
        try:
            gray = frame_to_gray(ds, index)
        except PixelDecodeError as exc:
            return IngestOutcome(source, Status.ERROR, f"{source}: {exc}", dataset=header)
        if float(gray.max()) - float(gray.min()) < NO_CONTENT:
            where = f"frame {index + 1}" if frames > 1 else "the image"
            return IngestOutcome(source, Status.SKIPPED, f"no image content: every pixel of {where} has the same "
                                                         "value (blank, all black or constant)", dataset=header)
        images.append(_breast_image(header, gray, kind, index if frames > 1 else None, source))
    return IngestOutcome(source, Status.OK, "", images=tuple(images), dataset=header)


NO_CONTENT = 1e-6   # a frame whose gray levels span less than this shows nothing


def _number(value: object) -> float | None:
    try:
        if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
            value = value[0]
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _is_media_directory(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    media_class = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    return media_class == MEDIA_DIRECTORY or "DirectoryRecordSequence" in ds


def missing_uids(ds: Dataset) -> str:
    """The reason an instance lacks what every output needs (its identifying UIDs), or ""."""
    missing = []
    for keyword, tag in REQUIRED_UIDS:
        try:
            value = str(ds.get(keyword, "") or "").strip()
        except Exception:
            value = ""
        if not value:
            missing.append(f"{keyword} ({tag})")
    return f"missing required attribute{'s' if len(missing) > 1 else ''} {', '.join(missing)}" if missing else ""


def over_limits(ds: Dataset, rules: IngestRules) -> str:
    """The reason an instance is too large to decode safely (frame size, frame count, pixel data bytes), or ""."""
    rows, cols, frames = _number(ds.get("Rows")), _number(ds.get("Columns")), _number(ds.get("NumberOfFrames"))
    if rows is not None and cols is not None and rows * cols > rules.max_frame_pixels:
        return (f"frame of {int(rows)} x {int(cols)} = {int(rows * cols)} pixels exceeds the limit "
                f"ingest.max_frame_pixels = {rules.max_frame_pixels}")
    if frames is not None and frames > rules.max_instance_frames:
        return f"NumberOfFrames {int(frames)} exceeds the limit ingest.max_instance_frames = {rules.max_instance_frames}"
    if "PixelData" in ds:
        element = ds.get_item("PixelData")
        length = element.length if isinstance(element, RawDataElement) else len(element.value or b"")
        if length not in (None, _UNDEFINED_LENGTH) and length > rules.max_input_bytes:
            return f"Pixel Data of {length} bytes exceeds the limit ingest.max_input_bytes = {rules.max_input_bytes}"
    return ""


@dataclass(frozen=True)
class Selection:
    """What the rules decided for one instance: kind "US" / "MG" to analyse, or a skip (or error) reason."""

    kind: str | None
    reason: str = ""
    status: Status = Status.SKIPPED

    @classmethod
    def skip(cls, reason: str) -> Selection:
        return cls(None, reason, Status.SKIPPED)


def select(ds: Dataset, rules: IngestRules) -> Selection:
    """Apply the ingest rules to one instance's header (module docstring: the rule order)."""
    sop_class = UID(str(ds.get("SOPClassUID", "")).strip())
    sop_name = sop_class.name if sop_class.is_valid else ""
    is_known = sop_class.is_valid and sop_name != str(sop_class)
    is_image_class = is_known and "Image Storage" in sop_name
    modality = str(ds.get("Modality", "") or "").strip().upper()

    if is_known and not is_image_class:
        return Selection.skip(f"non-image object: SOP Class '{sop_name}' ({sop_class}) is not an image storage "
                              "class")
    if modality in NON_IMAGE_MODALITIES:
        return Selection.skip(f"non-image object: Modality '{modality}'")
    if not any(tag in ds for tag in PIXEL_TAGS):
        if is_image_class:
            return Selection(None, f"image instance ({sop_name}) has no Pixel Data: file truncated or pixel data "
                                   "stripped", Status.ERROR)
        if not sop_class:
            return Selection(None, "no SOP Class UID and no Pixel Data: an incomplete file or not a DICOM instance",
                             Status.ERROR)
        return Selection.skip(f"no Pixel Data (SOP Class {sop_class}): not an image")
    if "PixelData" not in ds:
        return Selection.skip("float pixel data (parametric map), not a breast image")
    if sop_class == _TOMOSYNTHESIS:
        return Selection.skip("breast tomosynthesis volume (Breast Tomosynthesis Image Storage) is not analysed "
                              "(3-D)")
    if not modality:
        return Selection.skip("Modality (0008,0060) is absent or empty")

    breast_modalities = {m.strip().upper() for m in rules.breast_modalities}
    body_part_modalities = {m.strip().upper() for m in rules.body_part_modalities}
    breast_parts = {p.strip().upper() for p in rules.breast_body_parts}
    body_part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    parts_text = ", ".join(sorted(breast_parts)) or "(none)"

    if modality in breast_modalities:
        if modality == "US":
            if not body_part:
                if not rules.accept_us_without_body_part:
                    return Selection.skip("US BodyPartExamined is empty "
                                          "(ingest.accept_us_without_body_part = false)")
            elif body_part not in breast_parts:
                return Selection.skip(f"US BodyPartExamined '{body_part}' is not a breast body part "
                                      f"(ingest.breast_body_parts = {parts_text})")
            return Selection("US")
        return _for_processing_rule(ds, modality, sop_name, rules)
    if modality in body_part_modalities:
        if body_part in breast_parts or (not body_part and _anatomy_is_breast(ds)):
            return _for_processing_rule(ds, modality, sop_name, rules)
        shown = f"'{body_part}'" if body_part else "empty"
        return Selection.skip(f"{modality} BodyPartExamined {shown} is not a breast body part "
                              f"(ingest.breast_body_parts = {parts_text})")
    return Selection.skip(f"Modality '{modality}' is not analysed (ingest.breast_modalities = "
                          f"{', '.join(sorted(breast_modalities))}; ingest.body_part_modalities = "
                          f"{', '.join(sorted(body_part_modalities))} when BodyPartExamined is {parts_text})")


def _for_processing_rule(ds: Dataset, modality: str, sop_name: str, rules: IngestRules) -> Selection:
    intent = str(ds.get("PresentationIntentType", "") or "").strip().upper()
    for_processing = intent == "FOR PROCESSING" or (not intent and "For Processing" in sop_name)
    if for_processing and not rules.accept_for_processing:
        what = f"PresentationIntentType '{intent}'" if intent else f"SOP Class '{sop_name}'"
        return Selection.skip(f"{modality} {what} is a raw (For Processing) image "
                              "(ingest.accept_for_processing = false)")
    return Selection("MG")


def _anatomy_is_breast(ds: Dataset) -> bool:
    for item in ds.get("AnatomicRegionSequence", []) or []:
        code = (str(item.get("CodingSchemeDesignator", "")).upper(), str(item.get("CodeValue", "")))
        if code in _BREAST_CODES:
            return True
    return False


def select_frames(ds: Dataset, kind: str, rules: IngestRules) -> list[int]:
    """0-based frame indices to analyse (a single [0] for single-frame instances)."""
    frames = number_of_frames(ds)
    if frames == 1:
        return [0]
    if kind == "US" and rules.us_frames == "all":
        return list(range(min(frames, max(1, rules.max_frames))))
    return [representative_frame(ds)]


def representative_frame(ds: Dataset) -> int:
    """0-based: RepresentativeFrameNumber (1-based in DICOM) when valid, else the middle frame."""
    frames = number_of_frames(ds)
    try:
        number = int(ds.get("RepresentativeFrameNumber", 0) or 0)
    except (TypeError, ValueError):
        number = 0
    if 1 <= number <= frames:
        return number - 1
    return frames // 2


# ------------------------------------------------------------------------------------------------------- decoding

def _breast_image(header: Dataset, gray: np.ndarray, kind: str, frame_index: int | None,
                  source: str) -> BreastImage:
    rows, cols = gray.shape
    region: Box = (0, 0, cols, rows)
    mask = None
    if kind == "US":
        region = ultrasound_region(header, rows, cols) or region
        x0, y0, x1, y1 = region
        pixels = np.ascontiguousarray(gray[y0:y1, x0:x1])
    else:
        pixels = gray
        mask = detection_region(pixels, "MG", view_position(header))
    return BreastImage(
        dataset=header, pixels=pixels, modality=kind,
        frame_number=None if frame_index is None else frame_index + 1,
        frame_shape=(rows, cols), region=region, laterality=laterality(header),
        breast_mask=mask, source=source)


def ultrasound_region(ds: Dataset, rows: int, cols: int) -> Box | None:
    """The largest 2-D (RegionSpatialFormat 1) region of the Sequence of Ultrasound Regions, as an exclusive box
    clipped to the frame; None when there is none."""
    best: Box | None = None
    best_area = 0
    for item in ds.get("SequenceOfUltrasoundRegions", []) or []:
        try:
            if int(item.get("RegionSpatialFormat", 0)) != 1:
                continue
            x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
            x1, y1 = int(item.RegionLocationMaxX1) + 1, int(item.RegionLocationMaxY1) + 1   # DICOM is inclusive
        except (AttributeError, TypeError, ValueError):
            continue
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(cols, x1), min(rows, y1)
        area = (x1 - x0) * (y1 - y0)
        if x1 - x0 >= 2 and y1 - y0 >= 2 and area > best_area:
            best, best_area = (x0, y0, x1, y1), area
    return best


def header_only(ds: Dataset) -> Dataset:
    """A copy of `ds` without bulk pixel data (file meta kept): what writers need for references."""
    header = Dataset()
    for tag in ds.keys():
        if tag in PIXEL_TAGS:
            continue
        elem = ds.get_item(tag)
        header[tag] = elem if isinstance(elem, RawDataElement) else copy.deepcopy(elem)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        header.file_meta = copy.deepcopy(meta)
    encoding = getattr(ds, "original_encoding", None)
    if encoding and encoding[0] is not None:
        header.set_original_encoding(encoding[0], encoding[1], ds.original_character_set)
    return header


def _safe_header(ds: Dataset) -> Dataset | None:
    try:
        return header_only(ds)
    except Exception:
        return None


def _uid(ds: Dataset | None) -> str:
    try:
        return str(ds.get("SOPInstanceUID", "?")) if ds is not None else "?"
    except Exception:
        return "?"
