"""Lesion detector model: candidate extraction with known answers, letterbox geometry, a trained TinyUNet finding
unseen blobs, weights + manifest loading (all tiny, no ../shared)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from branet_pacs.imaging.geometry import box_iou
from branet_pacs.models.detector import (
    DetectorSpec,
    LesionDetector,
    Proposal,
    TinyUNet,
    heatmap_to_proposals,
    letterbox,
    model_heatmap_to_image,
    save_weights,
)
from branet_pacs.models.errors import ModelUnavailable
from branet_pacs.models.manifest import ModelEntry, file_sha256, register_model
from branet_pacs.train.detector import DetectorTrainSettings, predict_heatmaps, train_fold
from branet_pacs.train.detector_data import build_cache

from synthetic import blob_case, blob_image

CHANNELS = (8, 16, 32, 64)
SETTINGS = DetectorTrainSettings(size=64, epochs=14, batch_size=8, lr=5e-3, channels=CHANNELS, val_every=100)


# --- candidate extraction ---------------------------------------------------------------------------------------


def _two_blob_heatmap() -> np.ndarray:
    heat = np.full((64, 80), 0.02, dtype=np.float32)
    heat[10:20, 30:50] = 0.9      # strong lesion: box (30, 10, 50, 20)
    heat[40:44, 5:9] = 0.6        # weaker lesion: box (5, 40, 9, 44)
    heat[50, 60] = 0.95           # a single hot pixel: smaller than min_area
    return heat


def test_heatmap_to_proposals_known_boxes_and_order():
    proposals = heatmap_to_proposals(_two_blob_heatmap(), max_proposals=3, min_score=0.5, min_area=4, expand=0.0)
    assert proposals == [Proposal(box=(30, 10, 50, 20), score=pytest.approx(0.9)),
                         Proposal(box=(5, 40, 9, 44), score=pytest.approx(0.6))]


def test_heatmap_to_proposals_min_score_max_proposals_and_valid_mask():
    heat = _two_blob_heatmap()
    assert [p.box for p in heatmap_to_proposals(heat, min_score=0.7, expand=0.0)] == [(30, 10, 50, 20)]
    assert [p.box for p in heatmap_to_proposals(heat, max_proposals=1, min_score=0.5, expand=0.0)] == [(30, 10, 50, 20)]
    valid = np.ones_like(heat, dtype=bool)
    valid[:, 25:] = False          # the strong blob lies outside the valid region
    assert [p.box for p in heatmap_to_proposals(heat, valid, min_score=0.5, expand=0.0)] == [(5, 40, 9, 44)]
    assert heatmap_to_proposals(np.zeros((16, 16), np.float32), min_score=0.5) == []


def test_region_is_half_maximum_contour_and_expand_grows_box():
    yy, xx = np.mgrid[:100, :100]
    heat = np.exp(-((yy - 50) ** 2 + (xx - 40) ** 2) / (2 * 8.0 ** 2)).astype(np.float32) * 0.8
    (p,) = heatmap_to_proposals(heat, min_score=0.5, region_level=0.5, expand=0.0)
    # half maximum of a Gaussian lies at sigma * sqrt(2 ln 2) = 9.42 px from the centre
    assert p.box == (31, 41, 50, 60)
    (grown,) = heatmap_to_proposals(heat, min_score=0.5, region_level=0.5, expand=0.1)
    assert grown.box[0] < p.box[0] and grown.box[2] > p.box[2] and grown.box[1] < p.box[1]


def test_overlapping_peaks_are_suppressed():
    heat = np.zeros((40, 40), dtype=np.float32)
    heat[10:30, 10:30] = 0.6
    heat[15, 15] = 0.9             # two peaks in one region -> one proposal
    assert len(heatmap_to_proposals(heat, min_score=0.5, min_area=1)) == 1


# --- letterbox geometry ------------------------------------------------------------------------------------------


def test_letterbox_maps_boxes_back_to_the_image():
    image = np.full((300, 200), 0.3, dtype=np.float32)
    image[120:180, 40:100] = 0.9
    inputs, geo = letterbox(image, None, 64)
    assert inputs.shape == (2, 64, 64) and inputs.dtype == np.float32
    assert geo.scale == pytest.approx(64 / 300)
    assert inputs[1].sum() == pytest.approx(64 * round(200 * 64 / 300), abs=64)   # valid channel = the image
    rows, cols = np.nonzero(inputs[0] > 0.5)
    model_box = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    back = geo.to_image(model_box, image.shape)
    assert box_iou(back, (40, 120, 100, 180)) > 0.85
    heat = np.zeros((64, 64), np.float32)
    heat[rows, cols] = 1.0
    full = model_heatmap_to_image(heat, geo, image.shape)
    assert full.shape == image.shape and full[150, 70] > 0.9 and full[20, 20] == 0.0


def test_letterbox_crops_to_the_valid_mask_and_zeroes_outside():
    image = np.random.default_rng(0).random((120, 160)).astype(np.float32)
    valid = np.zeros_like(image, dtype=bool)
    valid[20:100, 10:90] = True
    valid[20:40, 10:30] = False
    inputs, geo = letterbox(image, valid, 32)
    assert geo.crop == (10, 20, 90, 100)
    assert inputs[0][inputs[1] == 0].max() == 0.0
    assert 0.0 <= inputs[0].min() and inputs[0].max() <= 1.0


# --- a trained detector --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blobs")
    rng = np.random.default_rng(0)
    cases = [blob_case(rng, folder, f"c{i}", lesion=i % 4 != 0) for i in range(24)]
    cache = build_cache(cases, SETTINGS.size, "US")
    checkpoint = tmp_path_factory.mktemp("fold") / "fold0.pt"
    net, history = train_fold(cache, np.arange(len(cases)), np.array([], dtype=int), SETTINGS, checkpoint,
                              fold=0, progress=False)
    return net, history, checkpoint, cache


def test_training_loss_falls(trained):
    _, history, _, _ = trained
    losses = [h["train_loss"] for h in history]
    assert len(losses) == SETTINGS.epochs
    assert np.mean(losses[-3:]) < 0.75 * np.mean(losses[:2])


def test_trained_detector_finds_an_unseen_blob(trained, tmp_path):
    net, _, _, _ = trained
    spec = DetectorSpec(size=SETTINGS.size, channels=CHANNELS)
    weights = save_weights(tmp_path / "det" / "weights.safetensors", [net], spec)
    detector = LesionDetector.from_weights(weights, name="det", version="0", modality="US")
    hits = 0
    for seed in range(100, 106):
        pixels, disk = blob_image(np.random.default_rng(seed))
        image = pixels.astype(np.float32) / 255.0
        proposals = detector.propose(image, max_proposals=3, min_score=0.0)
        truth = ndimage.find_objects(disk.astype(int))[0]
        truth_box = (truth[1].start, truth[0].start, truth[1].stop, truth[0].stop)
        hits += bool(proposals) and box_iou(proposals[0].box, truth_box) >= 0.5
        heat = detector.heatmap(image)
        assert heat.shape == image.shape and heat.dtype == np.float32
    assert hits >= 5
    empty, _ = blob_image(np.random.default_rng(7), lesion=False)
    assert all(p.score < 0.9 for p in detector.propose(empty.astype(np.float32) / 255.0, min_score=0.0))


def test_weights_round_trip_through_the_manifest(trained, tmp_path):
    net, _, _, cache = trained
    spec = DetectorSpec(size=SETTINGS.size, channels=CHANNELS, region_level=0.4)
    weights = save_weights(tmp_path / "us-det" / "weights.safetensors", [net, net], spec)
    register_model(tmp_path, ModelEntry(name="us-det", kind="detector", modality="US", version="1.2.3",
                                        file="us-det/weights.safetensors", sha256=file_sha256(weights)))
    detector = LesionDetector.load(tmp_path, "us", device="cpu")
    assert (detector.name, detector.version, detector.modality) == ("us-det", "1.2.3", "US")
    assert detector.spec == spec and len(detector.net.members) == 2
    reference = predict_heatmaps([net], cache.inputs[:4])
    assert np.abs(detector.model_heatmap(cache.inputs[:4].astype(np.float32)) - reference).max() < 0.02  # fp16


def test_load_without_weights_raises_model_unavailable(tmp_path):
    with pytest.raises(ModelUnavailable):
        LesionDetector.load(tmp_path, "US")                       # no manifest at all
    register_model(tmp_path, ModelEntry(name="us-det", kind="detector", modality="US", version="1",
                                        file="us-det/weights.safetensors", sha256="0" * 64))
    with pytest.raises(ModelUnavailable):
        LesionDetector.load(tmp_path, "US")                       # listed, file missing
    with pytest.raises(ModelUnavailable):
        LesionDetector.load(tmp_path, "MG")                       # no detector for the modality
    weights = save_weights(tmp_path / "us-det" / "weights.safetensors", [TinyUNet(CHANNELS)],
                           DetectorSpec(size=64, channels=CHANNELS))
    with pytest.raises(ModelUnavailable, match="SHA-256"):
        LesionDetector.load(tmp_path, "US")                       # file differs from the manifest
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelUnavailable):
        LesionDetector.from_weights(tmp_path / "junk.safetensors", name="x", version="1", modality="US")
    assert weights.is_file()


def test_loading_through_the_manifest_records_the_weights_checksum(trained, tmp_path):
    net, _, _, _ = trained
    weights = save_weights(tmp_path / "us-det" / "weights.safetensors", [net], DetectorSpec(size=64, channels=CHANNELS))
    digest = file_sha256(weights)
    register_model(tmp_path, ModelEntry(name="us-det", kind="detector", modality="US", version="1",
                                        file="us-det/weights.safetensors", sha256=digest))
    assert LesionDetector.load(tmp_path, "US", device="cpu").sha256 == digest
