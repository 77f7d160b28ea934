"""Pixel data of one frame -> grayscale float32 in [0, 1] (0 = black as a reader would see it).

The DICOM grayscale pipeline (PS3.3 C.11, PS3.4 N.2): stored values -> Modality LUT (or Rescale Slope/Intercept)
-> VOI LUT (VOI LUT Sequence, else the first Window Center/Width with its VOI LUT Function) -> MONOCHROME1 /
Presentation LUT Shape INVERSE inversion. Without a VOI transform the modality values are stretched min-max over the
frame, so 12-bit data stored in 16 bits (or any other range) fills [0, 1].

Colour (RGB, YBR_* already converted to RGB by the decoders, PALETTE COLOR through its LUTs) becomes ITU-R BT.601
luminance, stretched min-max over the frame like unwindowed monochrome, so the same picture gives the same gray
whether a device stored it as MONOCHROME2, RGB, YBR or palette colour.

Decoding is pydicom 3 with whatever plugins are installed (pylibjpeg-libjpeg / -openjpeg / -rle, pyjpegls,
python-gdcm, Pillow); pydicom tries each available plugin in turn until one succeeds, with two exceptions:
- JPEG 2000 is decoded by OpenJPEG (pylibjpeg-openjpeg) only: where OpenJPEG finds the codestream corrupted, another
  decoder may still return an image, of garbage;
- JPEG (baseline, extended, lossless) that every plugin refuses goes to dcmtk's `dcmdjpeg` (IJG libjpeg), which
  decodes files whose scan header some vendors write wrongly (Ss/Se not 0/63 in a sequential scan) with a warning.
Enhanced (functional group) objects: rescale and window are looked up per frame, then in the shared groups.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, pixel_array
from pydicom.uid import UID, ExplicitVRBigEndian

PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)   # Pixel Data, Float Pixel Data, Double Float Pixel Data

# ITU-R BT.601 luma weights (those of the YBR_FULL definition in PS3.3 C.7.6.3.1.2)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class PixelDecodeError(ValueError):
    """The pixel data of an instance cannot be turned into a grayscale frame."""


def number_of_frames(ds: Dataset) -> int:
    """NumberOfFrames as an int (1 when absent, empty or malformed)."""
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


JPEG_2000 = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                       "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"})
JPEG_IJG = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                      "1.2.840.10008.1.2.4.70"})   # what dcmdjpeg decodes
DCMTK_TIMEOUT_S = 120


def _transfer_syntax(ds: Dataset) -> str:
    return str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""


def decode_frame(ds: Dataset, frame_index: int | None) -> np.ndarray:
    """Stored values of one frame (0-based; None = the only or first frame), colour converted to RGB."""
    frames = number_of_frames(ds)
    index = frame_index or 0
    if not 0 <= index < frames:
        raise PixelDecodeError(f"frame index {index} out of range (NumberOfFrames = {frames})")
    if "PixelData" not in ds:
        raise PixelDecodeError("no Pixel Data (7FE0,0010) element")
    ts = _transfer_syntax(ds)
    plugin = "pylibjpeg" if ts in JPEG_2000 else ""
    try:
        return pixel_array(ds, index=index if frames > 1 else None, decoding_plugin=plugin)
    except Exception as exc:  # pydicom / plugin errors come in many types
        name = UID(ts).name if ts else "unknown transfer syntax"
        if ts in JPEG_IJG and shutil.which("dcmdjpeg"):
            return _dcmtk_decode(ds, index if frames > 1 else None, name, exc)
        what = "the codestream is corrupted (OpenJPEG refuses it)" if plugin else _one_line(exc)
        raise PixelDecodeError(f"cannot decode pixel data ({name}): {what}" +
                               (f": {_one_line(exc)}" if plugin else "")) from exc


def _one_line(exc: Exception) -> str:
    """The informative line of a decoder error (pydicom lists every plugin's message on lines of their own)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = "; ".join(lines[1:]) if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)
    return detail[:300]


def _dcmtk_decode(ds: Dataset, index: int | None, name: str, first: Exception) -> np.ndarray:
    """Decode through dcmtk's dcmdjpeg (a subprocess, list argv, timeout), then read the uncompressed copy."""
    with tempfile.TemporaryDirectory(prefix="branet-dcmdjpeg-") as tmp:
        source, target = Path(tmp) / "in.dcm", Path(tmp) / "out.dcm"
        try:
            pydicom.dcmwrite(source, ds, enforce_file_format=True)
            done = subprocess.run(["dcmdjpeg", str(source), str(target)], capture_output=True, text=True,
                                  timeout=DCMTK_TIMEOUT_S, check=False)
        except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
            raise PixelDecodeError(f"cannot decode pixel data ({name}): {_one_line(first)}; dcmdjpeg: "
                                   f"{type(exc).__name__}: {exc}") from exc
        if done.returncode != 0 or not target.is_file():
            message = " ".join(done.stderr.split())[:200] or f"exit status {done.returncode}"
            raise PixelDecodeError(f"cannot decode pixel data ({name}): {_one_line(first)}; dcmdjpeg: {message}")
        decoded = pydicom.dcmread(target)
        return pixel_array(decoded, index=index)


def frame_to_gray(ds: Dataset, frame_index: int | None) -> np.ndarray:
    """One frame as float32 (rows, cols) in [0, 1], 0 = black, bright = dense for mammograms.

    `frame_index` is 0-based; None means the single frame (or the first frame of a multi-frame instance).
    Raises PixelDecodeError when the pixel data cannot be decoded or interpreted.
    """
    arr = decode_frame(ds, frame_index)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)

    if photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(arr, _palette_view(ds))
        except Exception as exc:
            raise PixelDecodeError(f"cannot apply the palette colour LUT: {type(exc).__name__}: {exc}") from exc
        return _min_max(_luminance(rgb))
    if samples == 3 or (arr.ndim == 3 and arr.shape[-1] == 3):
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise PixelDecodeError(f"{photometric} frame has unexpected shape {arr.shape}")
        return _min_max(_luminance(arr))
    if samples != 1 or arr.ndim != 2:
        raise PixelDecodeError(f"unsupported pixel layout: SamplesPerPixel {samples}, frame shape {arr.shape}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2", ""):
        raise PixelDecodeError(f"unsupported PhotometricInterpretation {photometric!r} for 1 sample per pixel")

    view = frame_view(ds, frame_index or 0)
    values = _modality(arr, view)
    gray = _voi(values, view)
    if gray is None:
        gray = _min_max(values)
    if photometric == "MONOCHROME1" or (
            photometric == "MONOCHROME2" and str(view.get("PresentationLUTShape", "")).upper() == "INVERSE"):
        gray = 1.0 - gray
    return np.ascontiguousarray(gray, dtype=np.float32)


# ------------------------------------------------------------------------------------------------------ internals

_FRAME_ATTRS = {  # functional group macro -> the attributes it carries
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
}


def frame_view(ds: Dataset, frame_index: int) -> Dataset:
    """A small dataset with the LUT attributes that apply to one frame (top level, per-frame or shared groups)."""
    view = Dataset()
    for keyword in ("PhotometricInterpretation", "BitsStored", "BitsAllocated", "PixelRepresentation",
                    "RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence", "WindowCenter",
                    "WindowWidth", "VOILUTFunction", "VOILUTSequence", "PresentationLUTShape"):
        if keyword in ds:
            view[keyword] = ds[keyword]
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame_index < len(per_frame):
        groups.append(per_frame[frame_index])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    for macro, keywords in _FRAME_ATTRS.items():
        for group in groups:
            items = group.get(macro)
            if items:
                for keyword in keywords:
                    if keyword in items[0] and keyword not in view:
                        view[keyword] = items[0][keyword]
                break
    return view


def _palette_view(ds: Dataset) -> Dataset:
    """`ds`, or for Explicit VR Big Endian a view whose OW palette LUTs are little endian (pydicom 3.0 reads
    non-segmented LUT data as native-order bytes whatever the transfer syntax)."""
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is None or ts != ExplicitVRBigEndian:
        return ds
    view = Dataset()
    for elem in ds:
        if elem.tag != 0x7FE00010:
            view.add(elem)
    view.file_meta = ds.file_meta
    for colour in ("Red", "Green", "Blue", "Alpha"):
        keyword = f"{colour}PaletteColorLookupTableData"
        if keyword in ds and ds[keyword].VR == "OW":
            swapped = np.frombuffer(ds[keyword].value, dtype=">u2").astype("<u2").tobytes()
            view[keyword] = pydicom.DataElement(ds[keyword].tag, "OW", swapped)
    return view


def _first(value: object) -> float:
    """First value of a possibly multi-valued numeric attribute."""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0]
    return float(value)


def _modality(arr: np.ndarray, view: Dataset) -> np.ndarray:
    """Modality LUT (PS3.3 C.11.1): LUT sequence through pydicom, rescale in float32 (cheaper on big mammograms)."""
    if view.get("ModalityLUTSequence"):
        return apply_modality_lut(arr, view).astype(np.float32)
    values = arr.astype(np.float32)
    try:
        slope = _first(view.get("RescaleSlope", 1.0) or 1.0)
        intercept = _first(view.get("RescaleIntercept", 0.0) or 0.0)
    except (TypeError, ValueError):
        slope, intercept = 1.0, 0.0
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    return values


def _voi(values: np.ndarray, view: Dataset) -> np.ndarray | None:
    """VOI LUT Sequence (first item) or the first window, as [0, 1]; None when the instance defines neither."""
    if view.get("VOILUTSequence"):
        try:
            mapped = apply_voi(np.rint(values).astype(np.int64), view, index=0).astype(np.float32)
            lut_range = _lut_range(view.VOILUTSequence[0])
        except Exception:  # a malformed LUT: fall back to the window or min-max
            mapped, lut_range = None, None
        if mapped is not None and lut_range is not None:
            lo, hi = lut_range
            return np.clip((mapped - lo) / (hi - lo), 0.0, 1.0)
    if "WindowCenter" in view and "WindowWidth" in view:
        try:
            center, width = _first(view.WindowCenter), _first(view.WindowWidth)
        except (TypeError, ValueError, IndexError):
            return None
        function = str(view.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        return window(values, center, width, function)
    return None


def _lut_range(item: Dataset) -> tuple[float, float] | None:
    """Output range of a VOI LUT: its data's own min..max (descriptors often state the bit depth wrongly)."""
    data = item.LUTData
    if isinstance(data, bytes):
        entries = np.frombuffer(data, dtype="<u2")
    else:
        entries = np.asarray(data if isinstance(data, (list, tuple, pydicom.multival.MultiValue)) else [data])
    if entries.size == 0:
        return None
    lo, hi = float(entries.min()), float(entries.max())
    return (lo, hi) if hi > lo else None


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray | None:
    """Window Center/Width to [0, 1] by PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID); None if invalid."""
    if function == "SIGMOID":
        if width <= 0:
            return None
        with np.errstate(over="ignore"):
            return (1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))).astype(np.float32)
    if function == "LINEAR_EXACT":
        if width <= 0:
            return None
        return np.clip((values - center) / width + 0.5, 0.0, 1.0).astype(np.float32)
    if width < 1:  # LINEAR requires width >= 1
        return None
    if width == 1:
        return (values >= center - 0.5).astype(np.float32)
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0).astype(np.float32)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) @ _LUMA


def _min_max(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float32, copy=False)
    lo, hi = float(values.min()), float(values.max())
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo <= 0:
        return np.zeros(values.shape, dtype=np.float32)
    return ((values - lo) / (hi - lo)).astype(np.float32)
