"""Synthetic DICOM instances for tests: realistic modules, a visible lesion, every transfer syntax.

Plain functions (no pytest), used by every test in the project:

- `make_us`, `make_mg`, `make_dx`, `make_ct`, `make_seg`, `make_sr`, `make_study` build in-memory datasets with
  complete Patient / General Study / General Series / General Equipment / General Image / Image Pixel / SOP Common
  modules (and the US Region Calibration or Mammography modules where they apply);
- `encode(ds, transfer_syntax)` re-encodes an instance (pydicom 3 `compress` for RLE / JPEG-LS / JPEG 2000,
  dcmtk's `dcmcjpeg` for the JPEG processes, pydicom's writer for the uncompressed and deflated syntaxes) and
  returns it as read back from the encoded bytes, i.e. exactly what a file would give;
- `write(ds, path)`, `truncated_copy(path, out)`, `not_dicom_file(path)`.

Every image carries its synthetic lesion's box in ImageComments ("synthetic lesion box x0,y0,x1,y1", source-frame
pixel coordinates, x1/y1 exclusive); `lesion_box(ds)` reads it back. US lesions are dark ellipses, MG lesions bright
blobs. Images are deterministic for a given `seed`.
"""

from __future__ import annotations

import copy
import io
import shutil
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import convert_color_space
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

# SOP Classes (PS3.4 Annex B)
US_IMAGE = UID("1.2.840.10008.5.1.4.1.1.6.1")
US_MULTIFRAME_IMAGE = UID("1.2.840.10008.5.1.4.1.1.3.1")
MG_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.2")
MG_FOR_PROCESSING = UID("1.2.840.10008.5.1.4.1.1.1.2.1")
DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
CR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.1")
SC_IMAGE = UID("1.2.840.10008.5.1.4.1.1.7")
CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")
SEGMENTATION = UID("1.2.840.10008.5.1.4.1.1.66.4")
COMPREHENSIVE_SR = UID("1.2.840.10008.5.1.4.1.1.88.33")

UNCOMPRESSED = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian)
PYDICOM_ENCODED = (RLELossless, JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000)
DCMTK_ENCODED = {  # dcmcjpeg process options
    JPEGBaseline8Bit: ["+eb"],
    JPEGExtended12Bit: ["+ee"],
    JPEGLossless: ["+el", "+sv", "6"],
    JPEGLosslessSV1: ["+e1"],
}
LOSSY = (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless, JPEG2000)
ALL_TRANSFER_SYNTAXES = UNCOMPRESSED + PYDICOM_ENCODED + tuple(DCMTK_ENCODED)

DEFAULT_PATIENT = {
    "PatientName": "SYNTHETIC^BREAST",
    "PatientID": "BRANET-SYN-0001",
    "PatientBirthDate": "19700101",
    "PatientSex": "F",
}


# ----------------------------------------------------------------------------------------------------------- modules

def _now() -> tuple[str, str]:
    now = datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def new_study(**overrides: Any) -> dict[str, Any]:
    """Patient + General Study attributes shared by every instance of one study (pass to the make_* functions)."""
    date, time = _now()
    study = dict(DEFAULT_PATIENT)
    study.update({
        "StudyInstanceUID": generate_uid(),
        "StudyDate": date,
        "StudyTime": time,
        "StudyID": "1",
        "AccessionNumber": "SYN0001",
        "ReferringPhysicianName": "",
        "StudyDescription": "Synthetic breast study",
    })
    study.update(overrides)
    return study


def _base(sop_class: UID, modality: str, study: dict[str, Any] | None, series_uid: str | None,
          instance_number: int = 1) -> Dataset:
    """Patient, General Study, General Series, General Equipment, SOP Common and file meta."""
    study = study or new_study()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = "BRANET_TESTS"

    date, time = _now()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    for keyword, value in study.items():
        setattr(ds, keyword, value)
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = 1
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = ds.StudyTime
    ds.Manufacturer = "BraNet synthetic"
    ds.ManufacturerModelName = "dicom_factory"
    ds.DeviceSerialNumber = "0001"
    ds.SoftwareVersions = "1.0"
    ds.InstitutionName = "Synthetic Hospital"
    ds.InstanceNumber = instance_number
    ds.ContentDate = date
    ds.ContentTime = time
    ds.AcquisitionDateTime = date + time
    return ds


def _set_pixels(ds: Dataset, arr: np.ndarray, *, photometric: str, bits_stored: int, signed: bool = False) -> None:
    """Image Pixel module for an uncompressed array (frames, rows, cols[, samples])."""
    samples = 3 if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") else 1
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(arr.shape[1]), int(arr.shape[2])
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if samples == 3:
        ds.PlanarConfiguration = 0
    if arr.shape[0] > 1:
        ds.NumberOfFrames = int(arr.shape[0])
    frames = arr if arr.shape[0] > 1 else arr[0]
    if photometric == "YBR_FULL_422":
        ds.PixelData = _pack_ybr422(frames)
    else:
        dtype = {(8, False): "<u1", (8, True): "<i1", (16, False): "<u2", (16, True): "<i2"}[
            (ds.BitsAllocated, signed)]
        ds.PixelData = np.ascontiguousarray(frames).astype(dtype).tobytes()
    # pydicom 3 infers OB/OW from BitsAllocated when writing
    ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"


def _pack_ybr422(ybr: np.ndarray) -> bytes:
    """Uncompressed YBR_FULL_422 (PS3.3 C.7.6.3.1.2): Y1 Y2 Cb Cr per horizontal pair, chroma averaged."""
    ybr = ybr.astype(np.uint16)
    y = ybr[..., 0]
    cb = (ybr[..., 0::2, 1] + ybr[..., 1::2, 1] + 1) // 2
    cr = (ybr[..., 0::2, 2] + ybr[..., 1::2, 2] + 1) // 2
    packed = np.stack([y[..., 0::2], y[..., 1::2], cb, cr], axis=-1)
    return packed.astype(np.uint8).tobytes()


def _lesion_comment(box: tuple[int, int, int, int]) -> str:
    return "synthetic lesion box " + ",".join(str(int(v)) for v in box)


def lesion_box(ds: Dataset) -> tuple[int, int, int, int]:
    """The synthetic lesion's (x0, y0, x1, y1) in source-frame pixels (frame 1 for multi-frame US)."""
    text = str(ds.ImageComments)
    values = text.rsplit(" ", 1)[-1].split(",")
    x0, y0, x1, y1 = (int(v) for v in values)
    return x0, y0, x1, y1


def _ellipse(rows: int, cols: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[0:rows, 0:cols]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _smooth(noise: np.ndarray, passes: int = 2) -> np.ndarray:
    out = noise
    for _ in range(passes):
        out = (out + np.roll(out, 1, 0) + np.roll(out, -1, 0) + np.roll(out, 1, 1) + np.roll(out, -1, 1)) / 5.0
    return out


# ---------------------------------------------------------------------------------------------------------------- US

def us_region(rows: int, cols: int) -> tuple[int, int, int, int]:
    """The 2-D image region (x0, y0, x1, y1; exclusive) `make_us(with_regions=True)` uses."""
    return cols // 8, rows // 8, cols - cols // 8, rows - rows // 10


def _us_gray(rows: int, cols: int, frames: int, region: tuple[int, int, int, int] | None,
             rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """(frames, rows, cols) uint8 speckle with a dark elliptical lesion (moving 2 px per frame)."""
    x0, y0, x1, y1 = region or (0, 0, cols, rows)
    h, w = y1 - y0, x1 - x0
    out = np.zeros((frames, rows, cols), dtype=np.uint8)
    first_box = (0, 0, 0, 0)
    depth = np.linspace(1.0, 0.6, h)[:, None]
    for f in range(frames):
        speckle = _smooth(rng.rayleigh(1.0, size=(h, w)), 2)
        tissue = np.clip(40.0 + 70.0 * speckle * depth, 0, 250)
        lesion = _ellipse(h, w, 0.45 * h, 0.5 * w + 2 * f, h / 7.0, w / 6.0)
        tissue[lesion] = 12.0 + 6.0 * rng.random(int(lesion.sum()))
        # posterior acoustic shadow below the lesion
        lx0, ly0, lx1, ly1 = _box_of(lesion)
        tissue[ly1:, lx0:lx1] *= 0.7
        out[f, y0:y1, x0:x1] = np.round(tissue).astype(np.uint8)
        if f == 0:
            first_box = (lx0 + x0, ly0 + y0, lx1 + x0, ly1 + y0)
    if region is not None:  # burned-in UI outside the image region: a title bar, a depth scale, a logo
        out[:, 2:max(3, rows // 20), 4:cols // 2] = 255
        out[:, y0:y1:max(1, h // 10), x1 + 2:min(cols, x1 + 8)] = 230
        out[:, rows - rows // 14:rows - 2, cols - cols // 5:cols - 4] = 200
    return out, first_box


def _us_regions(rows: int, cols: int, region: tuple[int, int, int, int]) -> Sequence:
    """Sequence of Ultrasound Regions: the 2-D tissue region plus a small non-2D (spectral) region elsewhere."""
    def item(box: tuple[int, int, int, int], spatial_format: int, data_type: int) -> Dataset:
        it = Dataset()
        it.RegionSpatialFormat = spatial_format     # 1 = 2D, 3 = spectral
        it.RegionDataType = data_type               # 1 = tissue, 3 = PW spectral Doppler
        it.RegionFlags = 0
        it.RegionLocationMinX0, it.RegionLocationMinY0 = box[0], box[1]
        it.RegionLocationMaxX1, it.RegionLocationMaxY1 = box[2] - 1, box[3] - 1   # inclusive in DICOM
        it.PhysicalUnitsXDirection = 3              # cm
        it.PhysicalUnitsYDirection = 3
        it.PhysicalDeltaX = 0.01
        it.PhysicalDeltaY = 0.01
        it.ReferencePixelX0 = 0
        it.ReferencePixelY0 = 0
        return it

    x0, y0, x1, y1 = region
    small = (0, 0, max(2, cols // 10), max(2, rows // 10))
    return Sequence([item(small, 3, 3), item(region, 1, 1)])


def _palette_luts() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A tinted (sepia-like) 256-entry, 16-bit palette, monotonic in luminance."""
    i = np.arange(256, dtype=np.float64)
    red = np.round(i * 257.0)
    green = np.round(i * 0.85 * 257.0)
    blue = np.round(i * 0.70 * 257.0)
    return red.astype(np.uint16), green.astype(np.uint16), blue.astype(np.uint16)


def palette_to_rgb_gray(indices: np.ndarray) -> np.ndarray:
    """Luminance (ITU-R BT.601) of `make_us(photometric="PALETTE COLOR")` indices, in LUT units (0..65535)."""
    red, green, blue = _palette_luts()
    return 0.299 * red[indices] + 0.587 * green[indices] + 0.114 * blue[indices]


def make_us(rows: int = 480, cols: int = 640, photometric: str = "MONOCHROME2", with_regions: bool = False,
            frames: int = 1, transfer_syntax: str = ExplicitVRLittleEndian, *, seed: int = 0,
            study: dict[str, Any] | None = None, series_uid: str | None = None, instance_number: int = 1,
            body_part: str | None = "BREAST", laterality: str | None = "R",
            representative_frame: int | None = None, **overrides: Any) -> Dataset:
    """An ultrasound image (US Image or US Multi-frame Image IOD) with a dark elliptical lesion.

    photometric: MONOCHROME2, RGB, YBR_FULL, YBR_FULL_422 (uncompressed, 4:2:2 packed) or PALETTE COLOR.
    Colour images show the gray image plus coloured UI marks outside the image region. `body_part=None` leaves
    BodyPartExamined absent. Keyword `overrides` set any attribute by keyword (None deletes it).
    """
    if photometric == "YBR_FULL_422" and cols % 2:
        raise ValueError("YBR_FULL_422 needs an even number of columns")
    rng = np.random.default_rng(seed)
    region = us_region(rows, cols) if with_regions else None
    gray, box = _us_gray(rows, cols, frames, region, rng)

    sop_class = US_MULTIFRAME_IMAGE if frames > 1 else US_IMAGE
    ds = _base(sop_class, "US", study, series_uid, instance_number)
    ds.SeriesDescription = "Synthetic breast US"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "", "0001"]  # US Image Module: value 4 = image type code (2D)
    ds.PatientOrientation = ""
    ds.LossyImageCompression = "00"
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if laterality is not None:
        ds.Laterality = laterality
    ds.ImageComments = _lesion_comment(box)

    if photometric == "MONOCHROME2":
        _set_pixels(ds, gray, photometric="MONOCHROME2", bits_stored=8)
    elif photometric in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        rgb = np.repeat(gray[..., None], 3, axis=-1)
        if region is not None:  # a colour bar and a green marker in the UI area
            rgb[:, region[1]:region[3], 0:max(2, region[0] // 2)] = [200, 40, 40]
            rgb[:, 2:max(3, rows // 20), cols - cols // 6:cols - 4] = [30, 220, 30]
        pixels = rgb if photometric == "RGB" else convert_color_space(rgb, "RGB", "YBR_FULL")
        _set_pixels(ds, pixels, photometric=photometric, bits_stored=8)
    elif photometric == "PALETTE COLOR":
        _set_pixels(ds, gray, photometric="PALETTE COLOR", bits_stored=8)
        red, green, blue = _palette_luts()
        for name, lut in (("Red", red), ("Green", green), ("Blue", blue)):
            setattr(ds, f"{name}PaletteColorLookupTableDescriptor", [256, 0, 16])
            setattr(ds, f"{name}PaletteColorLookupTableData", lut.astype("<u2").tobytes())
            ds[f"{name}PaletteColorLookupTableData"].VR = "OW"
    elif photometric == "MONOCHROME1":
        _set_pixels(ds, 255 - gray, photometric="MONOCHROME1", bits_stored=8)
    else:
        raise ValueError(f"unsupported photometric {photometric!r}")

    if frames > 1:
        ds.FrameTime = 33.3
        ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
        ds.CineRate = 30
        if representative_frame is not None:
            ds.RepresentativeFrameNumber = representative_frame
    if with_regions:
        ds.SequenceOfUltrasoundRegions = _us_regions(rows, cols, region)
    _apply_overrides(ds, overrides)
    return encode(ds, transfer_syntax) if transfer_syntax != ExplicitVRLittleEndian else ds


# ---------------------------------------------------------------------------------------------------------------- MG

def _mg_values(rows: int, cols: int, bits_stored: int, laterality: str, signed: bool,
               rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Bright = dense: air ~2 % of range, breast tissue 30-55 %, a bright blob lesion ~80 %, a bright label."""
    top = (1 << bits_stored) - 1
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    # a half-ellipse breast attached to the chest wall (column 0 for L: PatientOrientation A\R; last col for R)
    cx = 0.0 if laterality != "R" else cols - 1.0
    r = np.sqrt(((yy - rows / 2) / (0.45 * rows)) ** 2 + ((xx - cx) / (0.75 * cols)) ** 2)
    breast = r <= 1.0
    tissue = 0.30 + 0.25 * np.clip(1.0 - r, 0, 1) + 0.04 * _smooth(rng.standard_normal((rows, cols)), 3)
    image = np.where(breast, tissue, 0.02 + 0.005 * rng.standard_normal((rows, cols)))
    lx = 0.35 * cols if laterality != "R" else cols - 0.35 * cols
    lesion_r = max(3.0, 0.05 * min(rows, cols))
    blob = np.exp(-(((yy - 0.45 * rows) ** 2 + (xx - lx) ** 2) / (2 * lesion_r ** 2)))
    image = image + 0.35 * blob * breast
    lesion = (blob > np.exp(-2.0)) & breast       # 2-sigma disc
    # burned-in label (bright rectangle) in the corner opposite the chest wall
    lab_x = slice(cols - cols // 6, cols - 2) if laterality != "R" else slice(2, cols // 6)
    image[2:max(4, rows // 25), lab_x] = 0.95
    values = np.clip(np.round(image * top), 0, top).astype(np.int32)
    if signed:
        values -= 1 << (bits_stored - 1)
    return values, _box_of(lesion)


def make_mg(rows: int = 512, cols: int = 400, bits_stored: int = 12, photometric: str = "MONOCHROME2",
            laterality: str = "L", presentation_intent: str = "FOR PRESENTATION",
            transfer_syntax: str = ExplicitVRLittleEndian, *, view: str = "CC", window: bool = True,
            voi_lut: bool = False, signed: bool = False, seed: int = 0, study: dict[str, Any] | None = None, series_uid: str | None = None,
            instance_number: int = 1, **overrides: Any) -> Dataset:
    """A digital mammogram (Digital Mammography X-Ray Image IOD) with a bright blob lesion.

    MONOCHROME1 stores inverted values, so after correct decoding it looks exactly like the MONOCHROME2 one made
    with the same seed. `window` adds WindowCenter/Width covering the whole stored range; `voi_lut` adds a linear
    VOI LUT Sequence (a 12-bit identity ramp over the stored range). Rescale is identity (slope 1, intercept 0).
    """
    rng = np.random.default_rng(seed)
    values, box = _mg_values(rows, cols, bits_stored, laterality, signed, rng)
    lo = -(1 << (bits_stored - 1)) if signed else 0
    hi = lo + (1 << bits_stored) - 1
    stored = values
    if photometric == "MONOCHROME1":
        stored = lo + hi - values

    sop_class = MG_FOR_PROCESSING if presentation_intent == "FOR PROCESSING" else MG_FOR_PRESENTATION
    ds = _base(sop_class, "MG", study, series_uid, instance_number)
    ds.SeriesDescription = "Synthetic mammogram"
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.PresentationIntentType = presentation_intent
    ds.BodyPartExamined = "BREAST"
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    ds.PatientOrientation = ["A", "R"] if laterality != "R" else ["P", "L"]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.ImageComments = _lesion_comment(box)
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    ds.ImagerPixelSpacing = [0.1, 0.1]
    ds.PixelSpacing = [0.1, 0.1]
    ds.DistanceSourceToDetector = 660
    ds.DistanceSourceToPatient = 620
    ds.EstimatedRadiographicMagnificationFactor = 1.0
    ds.KVP = 28
    ds.Exposure = 100
    ds.BreastImplantPresent = "NO"
    ds.OrganExposed = "BREAST"
    ds.AcquisitionContextSequence = Sequence()
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.DetectorType = "DIRECT"
    ds.AnatomicRegionSequence = Sequence([_code("76752008", "SCT", "Breast")])
    view_codes = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}
    code, meaning = view_codes.get(view, view_codes["CC"])
    vc = _code(code, "SCT", meaning)
    vc.ViewModifierCodeSequence = Sequence()
    ds.ViewCodeSequence = Sequence([vc])
    _set_pixels(ds, stored[None], photometric=photometric, bits_stored=bits_stored, signed=signed)
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    if window:
        ds.WindowCenter = (lo + hi + 1) / 2.0
        ds.WindowWidth = float(hi - lo + 1)
        ds.VOILUTFunction = "LINEAR"
        ds.WindowCenterWidthExplanation = "FULL RANGE"
    if voi_lut:
        item = Dataset()
        item.LUTDescriptor = [1 << bits_stored, lo, 12]
        ramp = np.linspace(0, 4095, 1 << bits_stored).round().astype("<u2")
        item.LUTData = ramp.tolist()
        item.LUTExplanation = "LINEAR RAMP"
        ds.VOILUTSequence = Sequence([item])
    _apply_overrides(ds, overrides)
    return encode(ds, transfer_syntax) if transfer_syntax != ExplicitVRLittleEndian else ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def make_dx(body_part: str = "BREAST", modality: str = "DX", rows: int = 256, cols: int = 200, *,
            photometric: str = "MONOCHROME2", laterality: str = "L", seed: int = 0,
            study: dict[str, Any] | None = None, **overrides: Any) -> Dataset:
    """A DX (or CR / RG / SC / OT, by `modality`) image of `body_part`; a mammogram-like picture either way."""
    ds = make_mg(rows, cols, bits_stored=12, photometric=photometric, laterality=laterality, seed=seed,
                 study=study)
    sop = {"DX": DX_FOR_PRESENTATION, "CR": CR_IMAGE}.get(modality, SC_IMAGE)
    ds.SOPClassUID = sop
    ds.file_meta.MediaStorageSOPClassUID = sop
    ds.Modality = modality
    ds.BodyPartExamined = body_part
    for keyword in ("ViewCodeSequence", "BreastImplantPresent", "OrganExposed"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PositionerType = ""
    if body_part.upper() != "BREAST":
        ds.AnatomicRegionSequence = Sequence([_code("51185008", "SCT", "Chest")])
        ds.ImageLaterality = "U"
    if modality != "DX":
        del ds.PresentationIntentType
    if sop == SC_IMAGE:
        ds.ConversionType = "WSD"
    _apply_overrides(ds, overrides)
    return ds


def make_ct(rows: int = 64, cols: int = 64, *, study: dict[str, Any] | None = None, **overrides: Any) -> Dataset:
    """A small signed 16-bit CT slice (a water disc in air), for 'other modality' tests."""
    ds = _base(CT_IMAGE, "CT", study, None)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = 1.0
    ds.KVP = 120
    ds.ImagePositionPatient = [0.0, 0.0, 0.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "FFS"
    ds.AcquisitionNumber = 1
    hu = np.where(_ellipse(rows, cols, rows / 2, cols / 2, rows / 3, cols / 3), 0, -1000)
    _set_pixels(ds, (hu + 1024)[None].astype(np.int32) - 1024, photometric="MONOCHROME2", bits_stored=16,
                signed=True)
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    _apply_overrides(ds, overrides)
    return ds


def make_seg(source: Dataset | None = None) -> Dataset:
    """A minimal (header-level) DICOM Segmentation with one binary frame: a non-image object that has PixelData."""
    source = source or make_us(64, 64)
    study = {k: source.get(k) for k in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                                        "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
                                        "AccessionNumber", "ReferringPhysicianName")}
    ds = _base(SEGMENTATION, "SEG", study, None)
    ds.SegmentationType = "BINARY"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.ContentLabel = "LESION"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = source.Rows, source.Columns
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = 1
    mask = np.zeros((source.Rows, source.Columns), dtype=np.uint8)
    mask[source.Rows // 4:source.Rows // 2, source.Columns // 4:source.Columns // 2] = 1
    ds.PixelData = pydicom.pixels.pack_bits(mask)
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    ds.ReferencedSeriesSequence = Sequence([Dataset()])
    ds.ReferencedSeriesSequence[0].SeriesInstanceUID = source.SeriesInstanceUID
    ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence = Sequence([ref])
    return ds


def make_sr(source: Dataset | None = None) -> Dataset:
    """A minimal Comprehensive SR (a container with one text item): a non-image object without PixelData."""
    source = source or make_us(64, 64)
    study = {k: source.get(k) for k in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                                        "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
                                        "AccessionNumber", "ReferringPhysicianName")}
    ds = _base(COMPREHENSIVE_SR, "SR", study, None)
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_code("126000", "DCM", "Imaging Measurement Report")])
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    text = Dataset()
    text.RelationshipType = "CONTAINS"
    text.ValueType = "TEXT"
    text.ConceptNameCodeSequence = Sequence([_code("121071", "DCM", "Finding")])
    text.TextValue = "synthetic"
    ds.ContentSequence = Sequence([text])
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.PerformedProcedureCodeSequence = Sequence()
    return ds


def make_study(modality: str = "US", n_images: int = 3, **kwargs: Any) -> list[Dataset]:
    """`n_images` instances of one modality ("US" or "MG") in one study and series (shared patient/study)."""
    study = kwargs.pop("study", None) or new_study()
    series_uid = generate_uid()
    maker = {"US": make_us, "MG": make_mg}[modality.upper()]
    out = []
    for i in range(n_images):
        extra = dict(kwargs)
        if modality.upper() == "MG" and "laterality" not in kwargs:
            extra["laterality"] = "L" if i % 2 == 0 else "R"
        out.append(maker(study=study, series_uid=series_uid, instance_number=i + 1, seed=i, **extra))
    return out


def _apply_overrides(ds: Dataset, overrides: dict[str, Any]) -> None:
    for keyword, value in overrides.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)


# ---------------------------------------------------------------------------------------------------------- encoding

def to_bytes(ds: Dataset) -> bytes:
    """The Part 10 file bytes of `ds`, in the transfer syntax named by its file meta."""
    buf = io.BytesIO()
    ts = UID(ds.file_meta.TransferSyntaxUID)
    if ts == ExplicitVRBigEndian:
        _write_big_endian(ds, buf)
    else:
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def fresh_copy(ds: Dataset) -> Dataset:
    """An independent deep copy with no 'original encoding' (so pydicom may write it in any transfer syntax)."""
    out = Dataset()
    for elem in ds:
        out.add(copy.deepcopy(elem))
    if hasattr(ds, "file_meta"):
        out.file_meta = copy.deepcopy(ds.file_meta)
    return out


def _write_big_endian(ds: Dataset, buf: io.BytesIO) -> None:
    """Explicit VR Big Endian: pydicom encodes the header; OW pixel data bytes must be swapped per word."""
    out = fresh_copy(ds)
    if getattr(ds, "original_encoding", (None, None))[1] is False:   # read from a big endian file: bytes are BE
        pydicom.dcmwrite(buf, out, implicit_vr=False, little_endian=False, enforce_file_format=True)
        return
    if ds.BitsAllocated == 16 and not ds.file_meta.TransferSyntaxUID.is_compressed:
        out.PixelData = np.frombuffer(ds.PixelData, dtype="<u2").astype(">u2").tobytes()
        out["PixelData"].VR = "OW"
    for lut in ("Red", "Green", "Blue"):
        keyword = f"{lut}PaletteColorLookupTableData"
        if keyword in ds:
            setattr(out, keyword, np.frombuffer(ds[keyword].value, dtype="<u2").astype(">u2").tobytes())
            out[keyword].VR = "OW"
    pydicom.dcmwrite(buf, out, implicit_vr=False, little_endian=False, enforce_file_format=True)


def from_bytes(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _decoded_copy(ds: Dataset) -> Dataset:
    """An uncompressed Explicit VR Little Endian copy (pixel data decoded as stored, no colour conversion)."""
    out = from_bytes(to_bytes(ds))
    if out.file_meta.TransferSyntaxUID.is_compressed:
        out.decompress(as_rgb=False)
    elif out.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian:
        arr = pydicom.pixels.pixel_array(out, as_rgb=False)
        if out.get("PhotometricInterpretation") == "YBR_FULL_422":
            raise ValueError("re-encode YBR_FULL_422 from the factory, not from a converted file")
        out.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return out


def encode(ds: Dataset, transfer_syntax: str, **kwargs: Any) -> Dataset:
    """`ds` re-encoded in `transfer_syntax`, returned as read back from the encoded bytes.

    kwargs go to the encoder: `jls_error` (JPEG-LS near-lossless, default 2), `j2k_cr` (JPEG 2000 lossy
    compression ratios, default [10]), `quality` (JPEG lossy, default 90), `color` for lossy JPEG of colour images:
    "ybr422" (default, YBR_FULL_422), "ybr444" (YBR_FULL) or "rgb". SOP Instance UIDs are kept (a test compares
    the two encodings of one instance).
    """
    ts = UID(transfer_syntax)
    src = _decoded_copy(ds) if ds.file_meta.TransferSyntaxUID.is_compressed or \
        ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian else ds
    if ts in UNCOMPRESSED:
        out = fresh_copy(src)
        out.file_meta.TransferSyntaxUID = ts
        return from_bytes(to_bytes(out))
    if ts in PYDICOM_ENCODED:
        return _encode_pydicom(src, ts, **kwargs)
    if ts in DCMTK_ENCODED:
        return _encode_dcmtk(src, ts, **kwargs)
    raise ValueError(f"no encoder for {ts.name}")


def _encode_pydicom(src: Dataset, ts: UID, **kwargs: Any) -> Dataset:
    out = from_bytes(to_bytes(src))  # an independent copy
    photometric = out.PhotometricInterpretation
    options: dict[str, Any] = {"generate_instance_uid": False}
    if ts == JPEGLSNearLossless:
        options["jls_error"] = kwargs.get("jls_error", 2)
    if ts == JPEG2000:
        options["j2k_cr"] = kwargs.get("j2k_cr", [10])
    if photometric == "YBR_FULL_422":
        raise ValueError("compress a YBR_FULL_422 source from RGB instead")
    if ts in (JPEG2000Lossless, JPEG2000) and photometric == "RGB" and kwargs.get("mct", True):
        # JPEG 2000 multi-component transform: reversible (RCT) for lossless, irreversible (ICT) for lossy
        options["use_mct"] = True
        arr = pydicom.pixels.pixel_array(out, as_rgb=False)
        out.PhotometricInterpretation = "YBR_RCT" if ts == JPEG2000Lossless else "YBR_ICT"
        out.compress(ts, arr, **options)
    else:
        out.compress(ts, **options)
    if ts in LOSSY:
        out.LossyImageCompression = "01"
    return from_bytes(to_bytes(out))


def dcmtk_available() -> bool:
    return shutil.which("dcmcjpeg") is not None


def _encode_dcmtk(src: Dataset, ts: UID, **kwargs: Any) -> Dataset:
    if not dcmtk_available():
        raise RuntimeError("dcmtk's dcmcjpeg is needed to make JPEG test files (apt-get install dcmtk)")
    args = ["dcmcjpeg", "-q", "+un", *DCMTK_ENCODED[ts]]
    if ts in (JPEGBaseline8Bit, JPEGExtended12Bit):
        args += ["+q", str(kwargs.get("quality", 90))]
        if src.get("SamplesPerPixel", 1) == 3:
            args += {"ybr422": ["+cy", "+s2"], "ybr444": ["+cy", "+s4"], "rgb": ["+cr"]}[kwargs.get("color", "ybr422")]
        if ts == JPEGExtended12Bit and src.BitsStored > 8:
            args += ["+bt"]
    with tempfile.TemporaryDirectory(prefix="branet-enc-") as tmp:
        src_path, dst_path = Path(tmp) / "in.dcm", Path(tmp) / "out.dcm"
        src_path.write_bytes(to_bytes(src))
        result = subprocess.run([*args, str(src_path), str(dst_path)], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"dcmcjpeg failed for {ts.name}: {result.stderr.strip() or result.stdout.strip()}")
        out = pydicom.dcmread(dst_path)
        out.PixelData  # noqa: B018 - load the value before the file goes away
    return out


# ------------------------------------------------------------------------------------------------------------ files

def write(ds: Dataset, path: str | Path) -> Path:
    """Write `ds` as a Part 10 file in its own transfer syntax; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_bytes(ds))
    return path


def truncated_copy(path: str | Path, out: str | Path, keep: float | int = 0.6) -> Path:
    """A copy of `path` cut after `keep` bytes (int) or that fraction of its size (float)."""
    data = Path(path).read_bytes()
    n = keep if isinstance(keep, int) else int(len(data) * keep)
    out = Path(out)
    out.write_bytes(data[:n])
    return out


def not_dicom_file(path: str | Path) -> Path:
    """A file that is not DICOM at all (text with a .dcm name)."""
    path = Path(path)
    path.write_text("this is not a DICOM file\n" * 20)
    return path


# ------------------------------------------------------------------------------------------------ malformed input

def with_bad_scan_header(ds: Dataset) -> Dataset:
    """A JPEG (baseline / extended) copy whose start-of-scan header says Se = 0 instead of 63, as some vendors
    write it: libjpeg (pylibjpeg), gdcm and Pillow refuse the frame, IJG libjpeg (dcmtk) decodes it with a
    warning."""
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    sos = frame.find(b"\xff\xda")
    components = frame[sos + 4]
    spectral_end = sos + 5 + 2 * components + 1          # Ss, then Se
    assert frame[spectral_end] == 63, "not a sequential DCT scan"
    broken = bytearray(frame)
    broken[spectral_end] = 0
    out = from_bytes(to_bytes(ds))
    out.PixelData = pydicom.encaps.encapsulate([bytes(broken)])
    return out


def deflate_bomb(inflated_bytes: int) -> bytes:
    """A small Deflated Explicit VR Little Endian file whose data set inflates to more than `inflated_bytes`."""
    ds = make_us(32, 32)
    ds.add_new(0x00090010, "LO", "BRANET TEST")
    ds.add_new(0x00091001, "OB", bytes(inflated_bytes))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    return to_bytes(ds)


def dicomdir(path: Path, listed: Path) -> Path:
    """A minimal DICOMDIR (Media Storage Directory) listing one image file."""
    from pydicom.fileset import FileSet

    fs = FileSet()
    fs.add(pydicom.dcmread(listed))
    fs.write(path)
    return path / "DICOMDIR"
