"""Sample synthetic ROIs from a trained generator and write them as PNG or as DICOM Secondary Capture.

Synthetic DICOM is marked synthetic beyond doubt: Conversion Type SYN (synthetic image), Image Type
DERIVED\\SECONDARY, a Series Description and Image Comments that say SYNTHETIC, a made-up patient
(SYNTHETIC^BRANET / SYNTHETIC) and Burned In Annotation NO. Pixels are identical for the same generator, seed and n;
UIDs are new on every call (two files must never share a SOP Instance UID).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from branet_pacs import __version__ as _package_version
from branet_pacs.imaging.roi import roi_to_uint8
from branet_pacs.sngan.networks import Generator, NetworkConfig, sample_latent
from branet_pacs.sngan.trainer import WEIGHTS_FORMAT, load_checkpoint

log = logging.getLogger(__name__)

SYNTHETIC_PATIENT_NAME = "SYNTHETIC^BRANET"
SYNTHETIC_PATIENT_ID = "SYNTHETIC"
MANUFACTURER = "BraNet-PACS"
ALGORITHM_NAME = "BraNet SNGAN"
FORMATS = ("png", "dicom")


@dataclass(frozen=True)
class LoadedGenerator:
    generator: Generator             # eval mode, CPU
    network: NetworkConfig
    classes: tuple[str, ...]
    modality: str
    epoch: int
    source: str
    weights: str = "auto"

    @property
    def version(self) -> str:
        return f"{Path(self.source).stem}-epoch{self.epoch}"


def load_generator(path: str | Path, weights: str = "auto") -> LoadedGenerator:
    """Generator from RUN/generator.safetensors, RUN/checkpoints/epoch_N.safetensors or a training .pt checkpoint.

    A directory is read as a run folder (its generator.safetensors). A .pt checkpoint is read with
    torch.load(weights_only=True); `weights` picks "ema" or "raw" generator weights there ("auto": EMA when the run
    kept one). A .safetensors file holds one set (the EMA one when the run kept an EMA).
    """
    if weights not in ("auto", "ema", "raw"):
        raise ValueError(f"weights must be auto, ema or raw, got {weights!r}")
    path = Path(path)
    if path.is_dir():
        path = path / "generator.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"generator weights not found: {path}")
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        if meta.get("format") != WEIGHTS_FORMAT:
            raise ValueError(f"{path} is not BraNet SNGAN generator weights ({WEIGHTS_FORMAT})")
        network = NetworkConfig.from_dict(json.loads(meta["network"]))
        classes = tuple(json.loads(meta["classes"]))
        modality, epoch = meta.get("modality", ""), int(meta.get("epoch", "0"))
        if weights != "auto" and (meta.get("ema") == "true") != (weights == "ema"):
            raise ValueError(f"{path} holds {'EMA' if meta.get('ema') == 'true' else 'raw'} weights only")
        state = load_file(str(path))
    else:
        data = load_checkpoint(path)
        network = NetworkConfig.from_dict(data["network"])
        classes = tuple(data["classes"])
        modality, epoch = str(data["settings"]["modality"]), int(data["epoch"])
        if weights == "ema" and not data["generator_ema"]:
            raise ValueError(f"{path} holds no EMA generator (the run was trained without --ema)")
        state = data["generator"] if weights == "raw" else (data["generator_ema"] or data["generator"])
    generator = Generator(network)
    generator.load_state_dict(state)
    generator.eval().requires_grad_(False)
    return LoadedGenerator(generator, network, classes, modality, epoch, str(path), weights)


def sample(loaded: LoadedGenerator, n: int, label: str, seed: int = 0, batch_size: int = 64) -> np.ndarray:
    """(n, S, S) uint8 synthetic ROIs of class `label`; the same (weights, n, label, seed) give the same pixels."""
    if label not in loaded.classes:
        raise ValueError(f"label must be one of {loaded.classes}, got {label!r}")
    if n < 1:
        raise ValueError("n must be >= 1")
    rng = torch.Generator().manual_seed(seed)
    z = sample_latent(n, loaded.network.latent_dim, rng)  # all latents up front: independent of batch size
    y = torch.full((n,), loaded.classes.index(label), dtype=torch.int64)
    out = np.empty((n, loaded.network.image_size, loaded.network.image_size), dtype=np.uint8)
    with torch.no_grad():
        for start in range(0, n, batch_size):
            images = loaded.generator(z[start:start + batch_size], y[start:start + batch_size])
            out[start:start + batch_size] = roi_to_uint8(images[:, 0].numpy())
    return out


def synthetic_sc(pixels: np.ndarray, label: str, index: int, study_uid: str, series_uid: str, loaded_version: str,
                 seed: int, when: datetime | None = None) -> hd.sc.SCImage:
    """One synthetic ROI as a DICOM Secondary Capture image that cannot be mistaken for patient data."""
    when = when or datetime.now()
    sc = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.MONOCHROME2,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        series_number=9901,
        sop_instance_uid=hd.UID(),
        instance_number=index + 1,
        manufacturer=MANUFACTURER,
        patient_id=SYNTHETIC_PATIENT_ID,
        patient_name=SYNTHETIC_PATIENT_NAME,
        patient_birth_date="",
        patient_sex=hd.PatientSexValues.O,
        accession_number="",
        study_id="SYNTHETIC",
        study_date=when.date(),
        study_time=when.time().replace(microsecond=0),
        referring_physician_name="",
        patient_orientation=("A", "F"),  # placeholder required by highdicom; emptied below
        laterality=None,
    )
    sc.PatientOrientation = None  # type 2C, present but empty: a synthetic image has no patient orientation
    sc.ConversionType = "SYN"  # PS3.3 C.8.6.1: synthetic image
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "NO"
    sc.RecognizableVisualFeatures = "NO"
    sc.SeriesDescription = f"SYNTHETIC {ALGORITHM_NAME} {label} ROI"
    sc.StudyDescription = "SYNTHETIC images - not from a patient"
    sc.ImageComments = (f"SYNTHETIC IMAGE generated by {ALGORITHM_NAME} ({loaded_version}, seed {seed}); "
                        f"class {label}; not a patient image")
    sc.Laterality = None  # type 2C (General Series): present and empty, a synthetic ROI has no body side
    sc.PatientIdentityRemoved = "YES"
    sc.DeidentificationMethod = "SYNTHETIC GAN image: no patient identity ever existed"
    sc.SoftwareVersions = _package_version
    sc.ManufacturerModelName = ALGORITHM_NAME
    sc.DerivationDescription = f"Generated by a class-conditional SNGAN from random latents (seed {seed})"
    return sc


def generate(checkpoint: str | Path, n: int, label: str, out_dir: str | Path, fmt: str = "png",
             seed: int = 0, weights: str = "auto") -> list[Path]:
    """Write n synthetic ROIs of class `label` into out_dir as PNG (8-bit) or DICOM SC; returns the files."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    loaded = load_generator(checkpoint, weights)
    images = sample(loaded, n, label, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if fmt == "png":
        for i, pixels in enumerate(images):
            path = out / f"synthetic_{label}_s{seed}_{i:05d}.png"
            Image.fromarray(pixels).save(path)
            written.append(path)
    else:
        study_uid, series_uid, when = hd.UID(), hd.UID(), datetime.now()
        for i, pixels in enumerate(images):
            sc = synthetic_sc(pixels, label, i, study_uid, series_uid, loaded.version, seed, when)
            path = out / f"synthetic_{label}_s{seed}_{i:05d}.dcm"
            sc.save_as(path, enforce_file_format=True)
            written.append(path)
        log.info("wrote %d synthetic SC instances, StudyInstanceUID %s", n, study_uid)
    return written
