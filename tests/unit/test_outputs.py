"""The one writer of output files: layout named after the source instance, SEG before SR, atomic writes."""

from __future__ import annotations

import numpy as np
import pydicom

from branet_pacs.config import OutputSettings
from branet_pacs.dicom.seg import build_seg
from branet_pacs.dicom.sr import build_sr
from branet_pacs.imaging.geometry import mask_box, mask_outline
from branet_pacs.outputs import encode, write_file, write_image_outputs
from branet_pacs.types import BreastImage, Finding, ImageResult, ModelIdentity

import dicom_factory as factory

MODELS = ModelIdentity("us-test", "1.0.0", 0.5, "LiteMedSAM")


def _result(frames: int = 1) -> ImageResult:
    ds = factory.make_us(rows=64, cols=80, frames=frames, seed=3)
    header = factory.fresh_copy(ds)
    del header.PixelData
    frame = 2 if frames > 1 else None
    image = BreastImage(dataset=header, pixels=np.zeros((64, 80), np.float32), modality="US", frame_number=frame,
                        frame_shape=(64, 80), region=(0, 0, 80, 64), laterality="R")
    mask = np.zeros((64, 80), bool)
    mask[20:40, 30:50] = True
    finding = Finding(1, mask_box(mask), mask, mask_outline(mask), 0.7, "malignant")
    settings = OutputSettings()
    seg = build_seg(image, [finding], MODELS, settings)
    return ImageResult(image, (finding,), MODELS, seg, build_sr(image, [finding], MODELS, seg, settings))


def test_outputs_are_named_after_the_source_and_written_seg_first(tmp_path):
    result = _result()
    written = write_image_outputs(result, tmp_path)
    sop, study = result.image.sop_instance_uid, result.image.study_instance_uid
    assert [w.kind for w in written] == ["SEG", "SR"]
    assert [w.relative for w in written] == [f"{study}/{sop}_seg.dcm", f"{study}/{sop}_sr.dcm"]
    assert pydicom.dcmread(written[1].path).SOPInstanceUID == written[1].sop_instance_uid == result.sr.SOPInstanceUID
    assert not list(tmp_path.rglob(".*.tmp")), "no temporary file left behind"
    again = write_image_outputs(result, tmp_path)        # the same objects again: same files, same bytes
    assert [w.path.read_bytes() for w in again] == [encode(result.seg), encode(result.sr)]
    frame = write_image_outputs(_result(frames=3), tmp_path)
    assert frame[0].relative.endswith("_f2_seg.dcm")


def test_write_file_replaces_atomically(tmp_path):
    path = tmp_path / "a" / "b.dcm"
    write_file(b"one", path)
    write_file(b"two", path, durable=True)
    assert path.read_bytes() == b"two" and sorted(p.name for p in path.parent.iterdir()) == ["b.dcm"]
