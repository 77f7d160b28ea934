"""Build the bundled demo studies in samples/ from the shared BUSI and mini-MIAS images (run once by a developer;
the output is committed, the datasets are not). Usage: .venv/bin/python scripts/make_samples.py ../shared/data samples

Each study is a complete, dciodvfy-checked DICOM instance set: a US study (BUSI, 8-bit, US Image IOD) and an MG study
(mini-MIAS film, rescaled to 12 bits, Digital Mammography For Presentation IOD), both RLE Lossless. Patient identity is
synthetic. The UIDs are derived from the source file name so rebuilding gives the same files.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, RLELossless

US_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.6.1"
MG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2"
ROOT = "1.2.826.0.1.3680043.10.1234."   # derived UIDs, deterministic per source name


def uid(*parts: str) -> str:
    digest = int(hashlib.sha256("/".join(parts).encode()).hexdigest(), 16)
    return ROOT + str(digest)[:30]


def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def base(study_key: str, patient: str, modality: str, series_desc: str, sop_class: str, name: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid(study_key, name)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = f"SAMPLE^{patient}"
    ds.PatientID = f"BRANET-{patient}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    ds.StudyInstanceUID = uid(study_key)
    ds.StudyDate, ds.StudyTime = "20240101", "120000"
    ds.ContentDate, ds.ContentTime = "20240101", "120000"
    ds.AccessionNumber = f"ACC-{patient}"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.StudyDescription = f"BraNet-PACS sample {modality} study"
    ds.SeriesInstanceUID = uid(study_key, "series")
    ds.SeriesNumber = 1
    ds.SeriesDescription = series_desc
    ds.Modality = modality
    ds.Manufacturer = "BraNet-PACS sample generator"
    ds.InstanceNumber = 1
    ds.BodyPartExamined = "BREAST"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    return ds


def finish(ds: Dataset, pixels: np.ndarray, path: Path) -> None:
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.compress(RLELossless, encoding_plugin="pydicom")  # gdcm's RLE encoder aborts on odd widths
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def us_instance(png: Path, study_key: str, index: int) -> tuple[Dataset, np.ndarray]:
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.uint8)
    ds = base(study_key, "US1", "US", "Breast US", US_SOP_CLASS, png.name)
    ds.InstanceNumber = index
    ds.ImageType = ["ORIGINAL", "PRIMARY", "BREAST", "0001"]
    ds.Laterality = ""  # Type 2C in General Series; one US study may cover both breasts
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PatientOrientation = ""
    ds.ImageComments = f"BUSI {png.parent.name}/{png.name} (Al-Dhabyani et al. 2020)"
    return ds, pixels


def mg_instance(png: Path, study_key: str, index: int, laterality: str) -> tuple[Dataset, np.ndarray]:
    pixels8 = np.asarray(Image.open(png).convert("L"), dtype=np.uint32)
    pixels = (pixels8 * 4095 // 255).astype(np.uint16)  # 8-bit film -> 12-bit range, as a clinical MG stores it
    ds = base(study_key, "MG1", "MG", "Mammography", MG_SOP_CLASS, png.name)
    ds.InstanceNumber = index
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LOG", 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PresentationLUTShape = "IDENTITY"
    ds.ImageLaterality = laterality
    ds.PatientOrientation = ["A", "R"] if laterality == "L" else ["P", "L"]
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.PixelSpacing = [0.2, 0.2]
    ds.DetectorType = "SCINTILLATOR"
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.BreastImplantPresent = "NO"
    ds.PartialView = "NO"
    ds.OrganExposed = "BREAST"
    ds.AnatomicRegionSequence = Sequence([code("76752008", "SCT", "Breast")])
    ds.ViewCodeSequence = Sequence([code("399368009", "SCT", "medio-lateral oblique")])
    ds.ViewCodeSequence[0].ViewModifierCodeSequence = Sequence([])
    ds.AcquisitionContextSequence = Sequence([])
    ds.ImageComments = f"mini-MIAS {png.name} (Suckling et al. 1994), research use only"
    return ds, pixels


def main(data: Path, out: Path) -> None:
    us = [data / "busi/benign/benign (4).png", data / "busi/malignant/malignant (10).png"]
    for i, png in enumerate(us, start=1):
        ds, pixels = us_instance(png, "busi-us-study", i)
        finish(ds, pixels, out / "us-study" / f"US{i}.dcm")
    # mdb027/mdb028: one patient (left/right pair); mdb028 has a malignant circumscribed mass.
    for i, (name, side) in enumerate([("mdb027", "R"), ("mdb028", "L")], start=1):
        ds, pixels = mg_instance(data / "mias" / f"{name}.png", "mias-mg-study", i, side)
        finish(ds, pixels, out / "mg-study" / f"MG{i}.dcm")
    print(f"samples written under {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
