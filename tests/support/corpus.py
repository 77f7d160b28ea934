"""A malformed-input corpus, generated: what hospitals and attackers send, each file named after what is wrong
with it, beside good files that must still be analysed. Used by the CLI and the Orthanc node tests (#13)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGExtended12Bit, RLELossless

import dicom_factory as factory

GOOD = ("good-us.dcm", "good-mg.dcm", "good-jpeg-extended-wrong-scan-header.dcm")
# Limits small enough that the corpus stays small (the CLI gets them through a settings file).
LIMITS = {"max_input_bytes": 50_000_000, "max_frame_pixels": 25_000_000, "max_instance_frames": 500}


def _without(ds: pydicom.Dataset, keyword: str) -> pydicom.Dataset:
    delattr(ds, keyword)
    return ds


def _truncated(good: bytes, fraction: float) -> bytes:
    return good[:int(len(good) * fraction)]


def _claims_rle(ds: pydicom.Dataset) -> bytes:
    """Native pixels in a file whose meta claims RLE Lossless (the two UIDs have the same length)."""
    data = factory.to_bytes(ds)
    native, rle = b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.5\0"
    assert str(ds.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.1" and data.count(native) == 1
    return data.replace(native, rle)


def _rle_bad_offsets() -> pydicom.Dataset:
    ds = factory.encode(factory.make_us(48, 64, seed=9), RLELossless)
    frame = bytearray(next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)))
    frame[4:8] = (10 ** 6).to_bytes(4, "little")          # first segment offset far past the end
    ds.PixelData = encapsulate([bytes(frame)])
    return ds


def _corrupted_j2k() -> pydicom.Dataset:
    ds = factory.encode(factory.make_mg(128, 100, seed=3), JPEG2000Lossless)
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:len(frame) // 3] + bytes(len(frame) - len(frame) // 3 - 2) + frame[-2:]])
    return ds


def _deep_sequence(levels: int) -> pydicom.Dataset:
    ds = factory.make_us(48, 64, seed=11)
    item = ds
    for _ in range(levels):
        inner = pydicom.Dataset()
        inner.CodeValue = "1"
        item.ContentSequence = pydicom.Sequence([inner])
        item = inner
    return ds


def write_corpus(folder: Path) -> dict[str, str]:
    """Write the corpus into `folder`; returns {file name: the status its row must have}."""
    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}

    def put(name: str, content: pydicom.Dataset | bytes | str, status: str) -> None:
        path = folder / name
        if isinstance(content, pydicom.Dataset):
            factory.write(content, path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        expected[name] = status

    us = factory.make_us(96, 128, seed=1)
    put("good-us.dcm", us, "ok")
    put("good-mg.dcm", factory.make_mg(256, 200, seed=2), "ok")
    put("good-jpeg-extended-wrong-scan-header.dcm",
        factory.with_bad_scan_header(factory.encode(factory.make_mg(256, 200, seed=4), JPEGExtended12Bit)), "ok")
    good = factory.to_bytes(factory.make_us(96, 128, seed=5))
    for key in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"):
        put(f"missing-{key}.dcm", _without(factory.make_us(48, 64, seed=6), key), "error")
    for fraction in (0.05, 0.3, 0.6, 0.95):
        put(f"truncated-at-{int(fraction * 100)}pct.dcm", _truncated(good, fraction), "error")
    put("header-only.dcm", _without(factory.make_us(48, 64, seed=7), "PixelData"), "error")
    put("claims-rle-holds-raw.dcm", _claims_rle(factory.make_us(48, 64, seed=8)), "error")
    huge = factory.make_us(48, 64, seed=12)
    huge.Rows, huge.Columns = 30000, 30000
    put("absurd-rows-columns.dcm", huge, "error")
    frames = factory.make_us(48, 64, seed=13)
    frames.NumberOfFrames = 100000
    put("absurd-number-of-frames.dcm", frames, "error")
    zero = factory.make_us(48, 64, seed=14)
    zero.Rows = 0
    put("rows-zero.dcm", zero, "error")
    put("deep-sequence.dcm", _deep_sequence(40), "ok")
    charset = factory.make_us(48, 64, seed=15)
    charset.SpecificCharacterSet = "ISO_IR 999"
    put("unknown-character-set.dcm", charset, "ok")
    slope = factory.make_mg(64, 50, seed=16)
    slope.RescaleSlope = 0
    put("rescale-slope-zero.dcm", slope, "error")
    flat = factory.make_mg(64, 50, seed=17)
    flat.PixelData = np.zeros((64, 50), np.uint16).tobytes()
    put("all-black.dcm", flat, "skipped")
    tiny = factory.make_us(48, 64, seed=18)
    tiny.Rows = tiny.Columns = 1
    tiny.PixelData = b"\x80\x00"
    put("one-pixel.dcm", tiny, "skipped")
    put("rle-bad-offsets.dcm", _rle_bad_offsets(), "error")
    put("jpeg2000-corrupted.dcm", _corrupted_j2k(), "error")
    put("deflate-bomb.dcm", factory.deflate_bomb(LIMITS["max_input_bytes"] * 2), "error")
    put("zz-duplicate-of-good-us.dcm", us, "skipped")   # analysed after good-us.dcm (sorted order)
    put("ct-chest.dcm", factory.make_ct(), "skipped")
    put("structured-report.dcm", factory.make_sr(), "skipped")
    put("README.txt", "Exported by a PACS\n", "skipped")
    from PIL import Image
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "png-renamed.dcm", format="PNG")
    expected["png-renamed.dcm"] = "skipped"
    put("empty.dcm", b"", "error")
    os.symlink(folder / "gone.dcm", folder / "dangling-link.dcm")
    expected["dangling-link.dcm"] = "error"
    os.symlink(folder / "link-loop.dcm", folder / "link-loop.dcm")
    expected["link-loop.dcm"] = "error"
    (folder / "a-sub").mkdir()
    factory.write(factory.make_us(48, 64, seed=19), folder / "a-sub" / "nested-good.dcm")
    expected["nested-good.dcm"] = "ok"
    os.symlink(folder / "a-sub", folder / "link-to-folder")
    expected["link-to-folder"] = "skipped"
    media = factory.dicomdir(folder / "media", folder / "a-sub" / "nested-good.dcm")
    for path in media.parent.rglob("*"):
        if path.is_file() and path.name != "DICOMDIR":
            expected[path.name] = "skipped"       # the copy the file set holds: a duplicate of nested-good
    expected["DICOMDIR"] = "skipped"
    return expected
