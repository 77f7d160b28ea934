"""Where results go: the one module that turns output objects into Part 10 bytes and files.

Layout under an output folder (the CLI's results folder, a re-analysis worker's spool):
    <StudyInstanceUID>/<SOPInstanceUID>[_f<frame>]_seg.dcm | _sr.dcm | _cad.dcm (Mammography CAD SR)
named after the *source* instance (and frame). Files are written atomically (temporary file + rename), so a
reader never sees half a file and a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom

from branet_pacs.dicom.codes import MAMMOGRAPHY_CAD_SR
from branet_pacs.types import ImageResult, InstanceResult

SUFFIX = {"SEG": "_seg.dcm", "SR": "_sr.dcm", "CAD": "_cad.dcm"}


def output_kind(dataset: pydicom.Dataset) -> str:
    """"SEG", "SR" (the TID 1500 report) or "CAD" (the Mammography CAD SR, also Modality SR)."""
    return "CAD" if str(dataset.SOPClassUID) == MAMMOGRAPHY_CAD_SR else str(dataset.Modality)


@dataclass(frozen=True)
class WrittenOutput:
    kind: str          # "SEG" | "SR" | "CAD"
    path: Path         # absolute
    relative: str      # to the output folder (what results.csv names)
    sop_instance_uid: str


def encode(dataset: pydicom.Dataset) -> bytes:
    """The Part 10 file of an output object (what is POSTed to Orthanc or C-STOREd)."""
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def output_stem(result: ImageResult) -> str:
    image = result.image
    return f"{image.sop_instance_uid}_f{image.frame_number}" if image.frame_number else image.sop_instance_uid


def write_file(data: bytes, path: Path, durable: bool = False) -> None:
    """Write `data` to `path` atomically; `durable` also fsyncs (outputs a crash must not lose)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_image_outputs(result: ImageResult, out_dir: Path) -> list[WrittenOutput]:
    """The SEG (if any), SR and Mammography CAD SR (if any) of one analysed image, SEG first (the SR references it)."""
    study_dir = Path(out_dir) / result.image.study_instance_uid
    stem = output_stem(result)
    written = []
    for dataset in result.outputs:
        kind = output_kind(dataset)
        path = study_dir / f"{stem}{SUFFIX[kind]}"
        write_file(encode(dataset), path)
        written.append(WrittenOutput(kind, path, str(path.relative_to(out_dir)), str(dataset.SOPInstanceUID)))
    return written


def write_outputs(result: InstanceResult, out_dir: Path) -> list[WrittenOutput]:
    """Every output object of one instance, in store order."""
    return [out for image in result.images for out in write_image_outputs(image, out_dir)]
