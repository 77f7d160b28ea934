"""What every object BraNet-PACS derives from a source image shares: equipment, UIDs, the reference header and
laterality. `seg.py` and `sr.py` build on this module and never on each other.

Output UIDs are deterministic (PS3.5 9 allows any scheme that keeps them unique): each one is derived from what
identifies the object — the source SOP Instance UID, the analysed frame, the object kind and the model identity
(models, weights checksums and analysis settings) — under the configured root (`[output] uid_root`). A redone
analysis (a crash, a retry, a second re-analysis run, another engine) therefore makes the same objects, and storing
them again is idempotent: an archive keeps one copy per SOP Instance UID.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass

import pydicom
from pydicom.charset import python_encoding
from pydicom.uid import generate_uid

import branet_pacs
from branet_pacs.config import UUID_UID_ROOT, OutputSettings, check_uid_root
from branet_pacs.dicom.pixels import PIXEL_TAGS
from branet_pacs.types import BreastImage, ModelIdentity

MODEL_NAME = "BraNet-PACS"  # ManufacturerModelName of every object we write

# The namespace of BraNet-PACS name-based UUIDs (fixed forever: changing it changes every output UID).
UID_NAMESPACE = uuid.UUID("4b337fab-b7c9-4a5d-8fc9-63123e5cb9b6")

# Patient / study attributes of Type 2 in the Patient and General Study modules: present (maybe empty) in every
# object we write, also when the source omits them (highdicom reads them from the source).
_TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "ReferringPhysicianName",
                        "StudyID", "AccessionNumber", "StudyDate", "StudyTime")


# ----------------------------------------------------------------------------------------------------- equipment

@dataclass(frozen=True)
class Equipment:
    """General / Enhanced General Equipment values of the objects BraNet-PACS writes."""

    manufacturer: str
    model_name: str
    software_versions: tuple[str, ...]
    serial_number: str
    algorithm_name: str
    algorithm_version: str


def equipment(models: ModelIdentity) -> Equipment:
    """Manufacturer, model and software versions naming the package and the model version (LO: 64 chars)."""
    versions = (f"{branet_pacs.ALGORITHM_NAME} {branet_pacs.__version__}", models.software_version)
    return Equipment(
        manufacturer=branet_pacs.MANUFACTURER,
        model_name=MODEL_NAME,
        software_versions=tuple(v[:64] for v in versions),   # LO
        serial_number=f"{branet_pacs.ALGORITHM_NAME}-{branet_pacs.__version__}"[:64],
        algorithm_name=branet_pacs.ALGORITHM_NAME,
        algorithm_version=str(models.algorithm_version)[:64],
    )


# ---------------------------------------------------------------------------------------------------------- UIDs

def derive_uid(root: str, *parts: str) -> str:
    """A UID that depends only on `parts` (and the root): "2.25.<UUIDv5 as integer>" or root + hash digits."""
    check_uid_root(root)
    if root == UUID_UID_ROOT:
        name = "\x1f".join(parts)
        return f"{UUID_UID_ROOT}.{uuid.uuid5(UID_NAMESPACE, name).int}"
    return str(generate_uid(prefix=root, entropy_srcs=list(parts)))


def series_uid(settings: OutputSettings, image: BreastImage, kind: str, models: ModelIdentity) -> str:
    """One output series per analysed frame and object kind ("SEG"/"SR"/"CAD"), for the equipment identity
    (package + model version). Viewers such as OHIF show one display set per SR or SEG series (its last instance),
    so objects of different images sharing a series would hide all but one of them."""
    eq = equipment(models)
    return derive_uid(settings.uid_root, "series", image.study_instance_uid, image.sop_instance_uid,
                      str(image.frame_number or 0), kind, eq.manufacturer, *eq.software_versions, models.settings)


def series_description(settings: OutputSettings, image: BreastImage, kind: str) -> str:
    """"<prefix> SR image 3" (+ " frame 7"): which source image an output series belongs to (LO, 64 characters)."""
    number = image.dataset.get("InstanceNumber")
    where = f" image {number}" if number not in (None, "") else ""
    if image.frame_number:
        where += f" frame {image.frame_number}"
    return f"{settings.series_description_prefix} {kind}{where}"[:64]


def instance_uid(settings: OutputSettings, image: BreastImage, kind: str, models: ModelIdentity) -> str:
    """The SOP Instance UID of the `kind` object made from one analysed frame of one source instance."""
    return derive_uid(settings.uid_root, "instance", image.sop_instance_uid, str(image.frame_number or 0), kind,
                      models.fingerprint)


def tracking_uid(settings: OutputSettings, image: BreastImage, finding_index: int, models: ModelIdentity) -> str:
    """Tracking UID of finding N: the same in the SEG segment and the SR measurement group that describe it."""
    return derive_uid(settings.uid_root, "tracking", image.sop_instance_uid, str(image.frame_number or 0),
                      str(finding_index), models.fingerprint)


def content_uid(settings: OutputSettings, image: BreastImage, kind: str, purpose: str,
                models: ModelIdentity) -> str:
    """Any other UID inside an output object (e.g. a SEG's Dimension Organization UID)."""
    return derive_uid(settings.uid_root, purpose, image.sop_instance_uid, str(image.frame_number or 0), kind,
                      models.fingerprint)


def device_uid() -> str:
    """Device Observer UID of the SR observer context: one per package version."""
    return derive_uid(UUID_UID_ROOT, "device", branet_pacs.ALGORITHM_NAME, branet_pacs.__version__)


# ------------------------------------------------------------------------------------------- source and laterality

def laterality(ds: pydicom.Dataset) -> str | None:
    """"L" or "R" from ImageLaterality, else Laterality; None for absent, both ("B") or unpaired ("U")."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value in ("L", "R"):
            return value
    return None


# ViewCodeSequence codes (CID 4014, SNOMED CT / SRT) of the oblique views, whose upper chest-wall corner holds the
# pectoral muscle
_OBLIQUE_VIEW_CODES = {"399368009", "R-10226", "399099002", "R-10228"}   # medio-lateral oblique, latero-medial oblique


def view_position(ds: pydicom.Dataset) -> str | None:
    """The mammographic view ("MLO", "CC", "ML", ...): ViewCodeSequence (oblique codes read as "MLO"), else
    ViewPosition; None when neither says."""
    for item in ds.get("ViewCodeSequence") or []:
        code, meaning = str(item.get("CodeValue", "")), str(item.get("CodeMeaning", "")).lower()
        if code in _OBLIQUE_VIEW_CODES or "oblique" in meaning:
            return "MLO"
    value = str(ds.get("ViewPosition", "") or "").strip().upper()
    return value or None


def source_for_reference(image: BreastImage) -> pydicom.Dataset:
    """A copy of the source header that derived objects can be built from.

    Pixel data is left out (only references are built from it). Missing Type 2 patient/study attributes become
    empty: highdicom copies them, and the SEG and SR IODs require them present.
    """
    source = pydicom.Dataset()
    for element in image.dataset:
        if element.tag not in PIXEL_TAGS:
            source.add(copy.deepcopy(element))
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in source:
            setattr(source, keyword, "")
    charsets = source.get("SpecificCharacterSet")
    if charsets and any(c and c not in python_encoding for c in
                        ([charsets] if isinstance(charsets, str) else list(charsets))):
        # a term no DICOM reader knows: the values were read with the default repertoire; write them as UTF-8
        source.SpecificCharacterSet = "ISO_IR 192"
    return source


# Image SOP classes whose IOD has the Multi-frame module: only references to these may name a frame
# (PS3.3 C.7.6.6; Referenced Frame Number is not allowed on a reference to a single-frame IOD).
MULTI_FRAME_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.3.1",                       # Ultrasound Multi-frame Image
    "1.2.840.10008.5.1.4.1.1.6.2",                       # Enhanced US Volume
    "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",   # Multi-frame Single Bit / Grayscale Byte SC
    "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4",   # Multi-frame Grayscale Word / True Color SC
    "1.2.840.10008.5.1.4.1.1.13.1.3",                    # Breast Tomosynthesis Image
    "1.2.840.10008.5.1.4.1.1.13.1.4", "1.2.840.10008.5.1.4.1.1.13.1.5",   # Breast Projection X-Ray
    "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.4.1",         # Enhanced CT / MR
    "1.2.840.10008.5.1.4.1.1.12.1", "1.2.840.10008.5.1.4.1.1.12.1.1",     # X-Ray Angiographic (Enhanced)
    "1.2.840.10008.5.1.4.1.1.12.2", "1.2.840.10008.5.1.4.1.1.12.2.1",     # X-Ray Radiofluoroscopic (Enhanced)
    "1.2.840.10008.5.1.4.1.1.20",                        # Nuclear Medicine Image
    "1.2.840.10008.5.1.4.1.1.77.1.1.1", "1.2.840.10008.5.1.4.1.1.77.1.2.1",   # Video Endoscopic / Microscopic
    "1.2.840.10008.5.1.4.1.1.77.1.4.1",                  # Video Photographic
    "1.2.840.10008.5.1.4.1.1.77.1.5.1", "1.2.840.10008.5.1.4.1.1.77.1.5.2",   # Ophthalmic Photography 8 / 16 bit
    "1.2.840.10008.5.1.4.1.1.77.1.6",                    # VL Whole Slide Microscopy
    "1.2.840.10008.5.1.4.1.1.481.1",                     # RT Image
})


def is_multi_frame(ds: pydicom.Dataset) -> bool:
    """A reference to this instance names a frame: its SOP class is a multi-frame one (or, for a class we do not
    know, it holds more than one frame)."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class in MULTI_FRAME_CLASSES:
        return True
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    known = pydicom.uid.UID(sop_class).name != sop_class
    return frames > 1 and not known


def referenced_frames(image: BreastImage) -> list[int] | None:
    """Referenced Frame Number for references to the source: only for multi-frame SOP classes."""
    if not is_multi_frame(image.dataset):
        return None
    return [int(image.frame_number or 1)]
