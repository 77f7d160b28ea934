"""Model loading and inference: runtime, manifest, ResNet18 classifier, LiteMedSAM and SAM segmenters."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from branet_pacs.models.classifier import (
    MalignancyClassifier,
    build_resnet18,
    clear_cache,
    load_classifier_networks,
    save_classifier,
)
from branet_pacs.models.errors import ModelUnavailable
from branet_pacs.models.manifest import (
    ModelEntry,
    file_sha256,
    find_model,
    read_manifest,
    register_model,
    verified_weights_path,
)
from branet_pacs.models.runtime import configure_torch, select_device

TORCH_THREADS = 2   # LiteMedSAM and SAM ViT-B: the large models of the suite (tests/conftest.py)


def _rois(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, size=(n, 128, 128)).astype(np.float32)


def _entry(name: str, file: str, sha: str, modality: str = "US", version: str = "1.0.0",
           kind: str = "classifier", **kw) -> ModelEntry:
    return ModelEntry(name=name, kind=kind, modality=modality, version=version, file=file, sha256=sha,
                      threshold=kw.pop("threshold", 0.5), input=kw.pop("input", {"size": 128}),
                      extra=kw.pop("extra", {}))


def _models_dir_with_classifier(tmp_path: Path, net: torch.nn.Module, modality: str = "US",
                                extra: dict | None = None, half: bool = True) -> Path:
    """Test-only weights (a freshly initialised net) registered in a temporary models directory."""
    models = tmp_path / "models"
    weights = models / f"{modality.lower()}-test" / "weights.safetensors"
    save_classifier(net, weights, half=half)
    register_model(models, _entry(f"{modality.lower()}-test", str(weights.relative_to(models)),
                                  file_sha256(weights), modality=modality, threshold=0.4, extra=extra or {}))
    return models


# --- runtime -------------------------------------------------------------------------------------------------

def test_configure_torch_is_idempotent() -> None:
    configure_torch(2)
    configure_torch(2)
    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError):
        configure_torch(-1)


def test_select_device() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):
            select_device("cuda")


# --- classifier network -------------------------------------------------------------------------------------

def test_build_resnet18_shapes() -> None:
    net = build_resnet18().eval()
    assert net.conv1.in_channels == 1
    assert isinstance(net.fc[0], torch.nn.Dropout) and net.fc[0].p == 0.5
    with torch.inference_mode():
        logits = net(torch.zeros(3, 1, 128, 128))
    assert logits.shape == (3, 2)


@pytest.mark.parametrize("half", [False, True])
def test_safetensors_round_trip(tmp_path: Path, half: bool) -> None:
    torch.manual_seed(0)
    net = build_resnet18().eval()
    x = torch.from_numpy(_rois(4))[:, None]
    path = tmp_path / "w.safetensors"
    save_classifier(net, path, half=half)
    assert path.read_bytes()[:8] != b"PK\x03\x04"  # not a zip/pickle torch file
    (loaded,) = load_classifier_networks(path)
    (again,) = load_classifier_networks(path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    with torch.inference_mode():
        a, b, c = net(x), loaded(x), again(x)
    assert torch.equal(b, c)
    if half:
        assert torch.allclose(torch.softmax(a, 1), torch.softmax(b, 1), atol=2e-2)
    else:
        assert torch.equal(a, b)


def test_load_rejects_foreign_weights(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ModelUnavailable, match="ResNet18"):
        load_classifier_networks(path)
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(b"not safetensors at all")
    with pytest.raises(ModelUnavailable):
        load_classifier_networks(bad)


# --- manifest -----------------------------------------------------------------------------------------------

def test_manifest_register_find_and_replace(tmp_path: Path) -> None:
    models = tmp_path / "models"
    assert read_manifest(models) == []
    sha = "a" * 64
    register_model(models, _entry("us-b", "us-b/w.safetensors", sha, version="1.0.0"))
    register_model(models, _entry("mg-a", "mg-a/w.safetensors", sha, modality="MG"))
    register_model(models, _entry("us-c", "us-c/w.safetensors", sha, version="1.10.0"))
    register_model(models, _entry("us-b", "us-b/w.safetensors", sha, version="1.2.0"))  # replaces by name
    doc = json.loads((models / "manifest.json").read_text())
    assert [m["name"] for m in doc["models"]] == ["mg-a", "us-b", "us-c"]
    assert [e.version for e in read_manifest(models) if e.name == "us-b"] == ["1.2.0"]
    assert find_model(models, "classifier", "us").name == "us-c"          # 1.10.0 > 1.2.0 (numeric)
    assert find_model(models, "classifier", "US", name="us-b").version == "1.2.0"
    assert find_model(models, "classifier", "MG").name == "mg-a"
    text = (models / "manifest.json").read_text()
    register_model(models, _entry("us-b", "us-b/w.safetensors", sha, version="1.2.0"))
    assert (models / "manifest.json").read_text() == text                  # stable formatting
    assert sorted(p.name for p in models.iterdir()) == ["manifest.json"]   # no stray lock/temp files


def test_manifest_missing_modality_and_kind(tmp_path: Path) -> None:
    models = tmp_path / "models"
    with pytest.raises(ModelUnavailable, match="does not exist"):
        find_model(models, "classifier", "US")
    register_model(models, _entry("us-a", "us-a/w.safetensors", "b" * 64))
    with pytest.raises(ModelUnavailable, match="MG"):
        find_model(models, "classifier", "MG")
    with pytest.raises(ModelUnavailable, match="detector"):
        find_model(models, "detector", "US")


def test_manifest_invalid(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        _entry("x", "../outside.safetensors", "c" * 64)
    with pytest.raises(ValueError):
        _entry("x", "x.safetensors", "not-a-digest")
    models = tmp_path / "models"
    models.mkdir()
    (models / "manifest.json").write_text(json.dumps({"models": [{"name": "x"}]}))
    with pytest.raises(ModelUnavailable, match="invalid"):
        read_manifest(models)


def test_verified_weights_path(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "m").mkdir(parents=True)
    weights = models / "m" / "w.safetensors"
    weights.write_bytes(b"weights v1")
    entry = _entry("m", "m/w.safetensors", file_sha256(weights))
    assert verified_weights_path(models, entry) == weights.resolve()
    weights.write_bytes(b"weights v2, changed")
    with pytest.raises(ModelUnavailable, match="SHA-256"):
        verified_weights_path(models, entry)
    weights.unlink()
    with pytest.raises(ModelUnavailable, match="missing"):
        verified_weights_path(models, entry)


# --- MalignancyClassifier -----------------------------------------------------------------------------------

def test_classifier_load_and_predict(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = build_resnet18().eval()
    models = _models_dir_with_classifier(tmp_path, net, "US", half=False)
    clf = MalignancyClassifier.load(models, "us", device="cpu")
    assert (clf.name, clf.version, clf.threshold, clf.modality) == ("us-test", "1.0.0", 0.4, "US")
    rois = _rois(70)  # more than one batch
    p = clf.predict(rois, batch_size=32)
    with torch.inference_mode():
        expected = torch.softmax(net(torch.from_numpy(rois)[:, None]), 1)[:, 1].numpy()
    assert p.shape == (70,) and p.dtype == np.float32
    np.testing.assert_allclose(p, expected, atol=1e-5)
    np.testing.assert_allclose(clf.predict(rois[:5]), p[:5], atol=1e-6)  # eval mode: no dropout noise
    assert clf.predict(rois[0]).shape == (1,)
    assert clf.predict(np.zeros((0, 128, 128), np.float32)).shape == (0,)
    assert clf.label(0.4) == "malignant" and clf.label(0.39) == "benign"
    with pytest.raises(ValueError):
        clf.predict(np.zeros((2, 64, 64), np.float32))
    with pytest.raises(ValueError):
        clf.predict(np.full((1, 128, 128), 3.0, np.float32))
    with pytest.raises(ModelUnavailable, match="MG"):
        MalignancyClassifier.load(models, "MG", device="cpu")


def test_classifier_tta_and_ensemble(tmp_path: Path) -> None:
    torch.manual_seed(2)
    nets = [build_resnet18().eval() for _ in range(2)]
    models = _models_dir_with_classifier(tmp_path, nets, "MG", extra={"tta": True}, half=False)
    clf = MalignancyClassifier.load(models, "MG", device="cpu")
    assert clf.tta and clf.ensemble_size == 2
    rois = _rois(3, seed=5)
    x = torch.from_numpy(rois)[:, None]
    with torch.inference_mode():
        views = [x, torch.flip(x, dims=(-1,))]
        expected = sum(torch.softmax(n(v), 1)[:, 1] for n in nets for v in views) / 4
    np.testing.assert_allclose(clf.predict(rois), expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(clf.predict(rois[:, :, ::-1].copy()), clf.predict(rois), atol=1e-5)


def test_classifier_refuses_tampered_weights(tmp_path: Path) -> None:
    clear_cache()
    models = _models_dir_with_classifier(tmp_path, build_resnet18(), "US")
    weights = models / "us-test" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelUnavailable, match="SHA-256"):
        MalignancyClassifier.load(models, "US", device="cpu")


def test_classifier_without_threshold_is_unavailable(tmp_path: Path) -> None:
    models = tmp_path / "models"
    weights = models / "w.safetensors"
    save_classifier(build_resnet18(), weights)
    register_model(models, _entry("us-nothreshold", "w.safetensors", file_sha256(weights), threshold=None))
    with pytest.raises(ModelUnavailable, match="threshold"):
        MalignancyClassifier.load(models, "US", device="cpu")


# --- segmenters ---------------------------------------------------------------------------------------------

from branet_pacs.config import SegmentationSettings  # noqa: E402
from branet_pacs.imaging.geometry import mask_box  # noqa: E402
from branet_pacs.models.segmenter import (  # noqa: E402
    PAPER_AMG_SETTINGS,
    LiteMedSAMSegmenter,
    SamSegmenter,
    Segmenter,
    make_segmenter,
)

# The slow test runs by default (about 2 min on a quiet 2-core machine); BRANET_SKIP_SLOW=1 leaves it out.
RUN_SLOW = os.environ.get("BRANET_SKIP_SLOW", "") != "1"


def _ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _speckled(shape: tuple[int, int], lesions: list[np.ndarray], seed: int = 0) -> np.ndarray:
    """A bright speckled background with dark lesions, float32 in [0, 1] (a caricature of breast US)."""
    rng = np.random.default_rng(seed)
    image = 0.6 + 0.08 * rng.standard_normal(shape)
    for lesion in lesions:
        image[lesion] = 0.15 + 0.05 * rng.standard_normal(int(lesion.sum()))
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_litemedsam_segments_ellipses_with_true_boxes() -> None:
    shape = (480, 640)                                          # wider than tall: padding at the bottom
    lesions = [_ellipse(shape, 200, 220, 70, 110), _ellipse(shape, 360, 500, 50, 60)]
    image = _speckled(shape, lesions)
    boxes = [mask_box(m) for m in lesions]
    seg = make_segmenter(SegmentationSettings(), device="cpu")
    assert isinstance(seg, LiteMedSAMSegmenter) and isinstance(seg, Segmenter) and seg.name == "LiteMedSAM"
    embedding = seg.embed(image)
    assert embedding.resized_size == (192, 256)
    masks = seg.decode(embedding, boxes)                        # both boxes in one batch, one encoding
    assert len(masks) == 2
    for mask, lesion in zip(masks, lesions):
        assert mask.shape == shape and mask.dtype == bool
        assert _dice(mask, lesion) > 0.8
    (alone,) = seg.decode(embedding, boxes[1:])                 # batching does not change a box's mask
    assert _dice(alone, masks[1]) > 0.99
    assert seg.segment(image, []) == []
    assert make_segmenter(SegmentationSettings(), device="cpu").model is seg.model   # loaded once per process


def test_litemedsam_tall_image_mask_shape() -> None:
    shape = (300, 170)                                          # taller than wide, odd sizes: padding at the right
    lesion = _ellipse(shape, 120, 90, 45, 40)
    image = _speckled(shape, [lesion], seed=1)
    (mask,) = LiteMedSAMSegmenter("cpu").segment(image, [mask_box(lesion)])
    assert mask.shape == shape
    assert _dice(mask, lesion) > 0.8


def test_segmenter_factory_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown segmenter"):
        make_segmenter(SegmentationSettings(segmenter="unet"))
    with pytest.raises(ModelUnavailable, match="needs a checkpoint"):
        make_segmenter(SegmentationSettings(segmenter="sam"))
    with pytest.raises(ModelUnavailable, match="not found"):
        make_segmenter(SegmentationSettings(segmenter="sam", sam_checkpoint=str(tmp_path / "absent.pth")))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ModelUnavailable, match="cannot be read"):
        SamSegmenter(garbage, "vit_b", "cpu")
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": {"weight": torch.zeros(1)}, "extra": Path("x")}, pickled)  # arbitrary object: refused
    with pytest.raises(ModelUnavailable, match="cannot be read"):
        SamSegmenter(pickled, "vit_b", "cpu")
    wrong = tmp_path / "wrong.pth"
    torch.save({"weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(ModelUnavailable, match="does not match SAM vit_b"):
        SamSegmenter(wrong, "vit_b", "cpu")
    with pytest.raises(ModelUnavailable, match="unknown SAM model type"):
        SamSegmenter(wrong, "vit_x", "cpu")


@pytest.fixture(scope="module")
def sam_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised ViT-B saved as a plain state dict: stands in for a user's sam_vit_b checkpoint."""
    from segment_anything import sam_model_registry
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b_random.pth"
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), path)
    return path


def test_sam_loads_and_segments_a_box(sam_checkpoint: Path) -> None:
    seg = make_segmenter(SegmentationSettings(segmenter="sam", sam_checkpoint=str(sam_checkpoint)), device="cpu")
    assert isinstance(seg, SamSegmenter) and isinstance(seg, Segmenter) and seg.name == "SAM VIT-B"
    shape = (90, 120)
    image = _speckled(shape, [_ellipse(shape, 40, 60, 20, 30)], seed=2)
    masks = seg.segment(image, [(30, 20, 90, 60), (0, 0, 120, 90)])
    assert [m.shape for m in masks] == [shape, shape] and all(m.dtype == bool for m in masks)


def test_sam_mask_generator_uses_paper_settings(sam_checkpoint: Path) -> None:
    generator = SamSegmenter(sam_checkpoint, "vit_b", "cpu").mask_generator
    assert (generator.points_per_batch, generator.pred_iou_thresh, generator.stability_score_thresh,
            generator.stability_score_offset, generator.box_nms_thresh, generator.crop_n_layers,
            generator.crop_nms_thresh, generator.crop_overlap_ratio, generator.crop_n_points_downscale_factor,
            generator.min_mask_region_area, generator.output_mode) == \
        (64, 0.88, 0.95, 1.0, 0.7, 0, 0.7, 512 / 1500, 1, 0, "binary_mask")
    assert len(generator.point_grids) == 1 and generator.point_grids[0].shape == (32 * 32, 2)
    assert PAPER_AMG_SETTINGS.points_per_side == 32


@pytest.mark.slow
@pytest.mark.skipif(not RUN_SLOW, reason="BRANET_SKIP_SLOW=1: SAM ViT-B automatic masks (1024 prompts) left out")
def test_sam_automatic_masks_paper_settings(sam_checkpoint: Path) -> None:
    shape = (64, 96)
    image = _speckled(shape, [_ellipse(shape, 30, 40, 15, 20)], seed=3)
    results = SamSegmenter(sam_checkpoint, "vit_b", "cpu").automatic_masks(image)
    assert isinstance(results, list)
    for item in results:
        assert item["segmentation"].shape == shape and item["segmentation"].dtype == bool
        assert item["predicted_iou"] >= 0.88 and item["stability_score"] >= 0.95


def test_classifier_margin_views_average_rois_cut_at_each_margin(tmp_path: Path) -> None:
    from branet_pacs.imaging.roi import extract_roi

    torch.manual_seed(3)
    net = build_resnet18().eval()
    models = tmp_path / "models"
    for name, spec in (("us-plain", {"size": 128, "margin": 0.15}),
                       ("us-views", {"size": 128, "margin": 0.15, "tta_margins": [0.05, 0.15, 0.3]})):
        weights = models / name / "weights.safetensors"
        save_classifier(net, weights, half=False)
        register_model(models, _entry(name, str(weights.relative_to(models)), file_sha256(weights),
                                      version="2.0.0" if name == "us-views" else "1.0.0", input=spec))
    plain = MalignancyClassifier.load(models, "US", device="cpu", name="us-plain")
    views = MalignancyClassifier.load(models, "US", device="cpu", name="us-views")
    assert plain.margin_views == () and views.margin_views == (0.05, 0.15, 0.3)

    image = np.random.default_rng(4).uniform(size=(200, 300)).astype(np.float32)
    boxes = [(50, 60, 120, 110), (200, 20, 260, 90)]
    single = [plain.predict(extract_roi(image, box, 0.15))[0] for box in boxes]
    averaged = [np.mean([plain.predict(extract_roi(image, box, m))[0] for m in (0.05, 0.15, 0.3)]) for box in boxes]
    np.testing.assert_allclose(plain.predict_boxes(image, boxes, margin=0.15), single, atol=1e-6)
    np.testing.assert_allclose(views.predict_boxes(image, boxes, margin=0.15), averaged, atol=1e-6)
    assert not np.allclose(single, averaged)
    assert views.predict_boxes(image, [], margin=0.15).shape == (0,)


def test_classifier_cuts_its_rois_on_the_window_it_was_trained_on(tmp_path: Path) -> None:
    from branet_pacs.imaging.roi import extract_roi, tissue_levels

    torch.manual_seed(3)
    net = build_resnet18().eval()
    models = tmp_path / "models"
    for name, spec in (("mg-own", {"size": 128, "margin": 0.5}),
                       ("mg-tissue", {"size": 128, "margin": 0.5, "window": "tissue"})):
        weights = models / name / "weights.safetensors"
        save_classifier(net, weights, half=False)
        register_model(models, _entry(name, str(weights.relative_to(models)), file_sha256(weights), modality="MG",
                                      version="2.0.0" if name == "mg-tissue" else "1.0.0", input=spec))
    own = MalignancyClassifier.load(models, "MG", device="cpu", name="mg-own")
    tissue = MalignancyClassifier.load(models, "MG", device="cpu", name="mg-tissue")
    assert own.roi_window == "roi" and tissue.roi_window == "tissue"
    assert own.lesion_box == "mask"              # entries from before lesion boxes were recorded: outlines

    image = np.random.default_rng(4).uniform(0.1, 0.6, size=(200, 300)).astype(np.float32)
    image[80:100, 70:100] = 0.95
    box = (60, 70, 110, 110)
    expected = own.predict(extract_roi(image, box, 0.5, tissue_levels(image)))
    np.testing.assert_allclose(tissue.predict_boxes(image, [box], margin=0.5), expected, atol=1e-6)
    np.testing.assert_allclose(own.predict_boxes(image, [box], margin=0.5),
                               own.predict(extract_roi(image, box, 0.5)), atol=1e-6)


def _head_for(models: Path, name: str, rng: np.random.Generator):
    from branet_pacs.models.feature_head import FeatureHead

    labels = np.arange(40) % 2
    features = rng.normal(0, 1, (40, 512)).astype(np.float32) + labels[:, None] * 0.5
    head = FeatureHead.fit(features, labels, C=0.1)
    path = models / name / "feature_head.safetensors"
    head.save(path)
    return head, {"file": f"{name}/feature_head.safetensors", "sha256": file_sha256(path)}


def test_classifier_with_a_feature_head_combines_and_checks_it(tmp_path: Path) -> None:
    from branet_pacs.models.feature_head import combine

    torch.manual_seed(5)
    net = build_resnet18().eval()
    models = _models_dir_with_classifier(tmp_path, net)
    head, spec = _head_for(models, "us-test", np.random.default_rng(6))
    entry = _entry("us-test", "us-test/weights.safetensors", file_sha256(models / "us-test" / "weights.safetensors"),
                   version="2.0.0", threshold=0.4, extra={"feature_head": spec})
    register_model(models, entry)
    clf = MalignancyClassifier.load(models, "US", device="cpu")
    assert clf.feature_head is not None and clf.weights_sha256 == (entry.sha256, spec["sha256"])
    image = np.random.default_rng(7).uniform(size=(150, 200)).astype(np.float32)
    boxes = [(20, 30, 80, 90), (100, 40, 160, 110)]
    features = np.random.default_rng(8).normal(0, 1, (2, 512)).astype(np.float32)
    cnn = MalignancyClassifier(entry, clf._networks, clf.device).predict_boxes(image, boxes, 0.15)
    np.testing.assert_allclose(clf.predict_boxes(image, boxes, 0.15, features),
                               combine(cnn, head.predict(features)), atol=1e-6)
    with pytest.raises(ValueError, match="feature head"):
        clf.predict_boxes(image, boxes, 0.15)           # a head without its features is a bug, not a silent CNN
    weighted = _entry("us-test", entry.file, entry.sha256, version="2.0.1", threshold=0.4,
                      extra={"feature_head": {**spec, "cnn_weight": 0.2}})
    register_model(models, weighted)
    clf = MalignancyClassifier.load(models, "US", device="cpu")
    assert clf.version == "2.0.1" and clf.cnn_weight == 0.2
    np.testing.assert_allclose(clf.predict_boxes(image, boxes, 0.15, features),
                               combine(cnn, head.predict(features), 0.2), atol=1e-6)
    (models / "us-test" / "feature_head.safetensors").write_bytes(b"tampered")
    with pytest.raises(ModelUnavailable, match="SHA-256"):
        MalignancyClassifier.load(models, "US", device="cpu")


def _ellipse_lesion_image(modality: str, background: float, lesion: float):
    """A 220x160 image with one elliptic lesion centred at (90, 70), as ingest would hand it over."""
    import pydicom

    from branet_pacs.types import BreastImage

    yy, xx = np.mgrid[:160, :220]
    pixels = np.full((160, 220), background, np.float32)
    pixels[(yy - 70) ** 2 / 30 ** 2 + (xx - 90) ** 2 / 45 ** 2 < 1] = lesion
    return BreastImage(dataset=pydicom.Dataset(), pixels=pixels, modality=modality, frame_number=None,
                       frame_shape=pixels.shape, region=(0, 0, 220, 160), breast_mask=None)


def test_pipeline_feeds_litemedsam_features_of_each_lesion_to_the_head(tmp_path: Path) -> None:
    """Given boxes, real LiteMedSAM: the finding's p(malignant) is the CNN's combined with the head's on the pooled
    embedding of that lesion's mask; the identity (and so the UIDs) includes the head's checksum."""
    import dataclasses

    import pydicom

    from branet_pacs.config import load_config
    from branet_pacs.models.feature_head import combine
    from branet_pacs.models.segmenter import LiteMedSAMSegmenter, pooled_embedding
    from branet_pacs.pipeline import Analyzer
    from branet_pacs.types import BreastImage

    torch.manual_seed(9)
    models = _models_dir_with_classifier(tmp_path, build_resnet18().eval())
    head, spec = _head_for(models, "us-test", np.random.default_rng(10))
    weights_sha = file_sha256(models / "us-test" / "weights.safetensors")
    register_model(models, _entry("us-test", "us-test/weights.safetensors", weights_sha, version="2.0.0",
                                  threshold=0.4, extra={"feature_head": spec}))
    image = _ellipse_lesion_image("US", background=0.6, lesion=0.1)
    pixels = image.pixels
    analyzer = Analyzer(dataclasses.replace(load_config(), models_dir=str(models), threads=1, device="cpu"))
    (finding,) = analyzer.find_lesions(image, [(40, 35, 140, 110)])
    segmenter = LiteMedSAMSegmenter("cpu")
    embedding = segmenter.embed(pixels)
    features = pooled_embedding(embedding, finding.mask)[None]
    clf = analyzer.classifier("US")
    cnn = MalignancyClassifier(clf.entry, clf._networks, clf.device).predict_boxes(
        pixels, [finding.box], analyzer.roi_margin("US"))
    assert finding.p_malignant == pytest.approx(float(combine(cnn, head.predict(features))[0]), abs=1e-5)
    assert analyzer.model_identity("US", automatic=False).weights_sha256 == (weights_sha, spec["sha256"])


@pytest.mark.parametrize("inputs", [("litemedsam", "lesion-descriptors"),
                                    ("litemedsam", "litemedsam-crop", "lesion-descriptors"),
                                    ("litemedsam", "litemedsam-crop", "litemedsam-crop-stages", "lesion-descriptors")])
def test_pipeline_feeds_the_lesion_descriptors_too_when_the_head_reads_them(tmp_path: Path, inputs) -> None:
    """The MG recipes' heads (manifest inputs litemedsam [+ litemedsam-crop [+ litemedsam-crop-stages]] +
    lesion-descriptors, one block each): the pipeline gives it the pooled embedding [, the lesion crop's [, the crop's
    encoder stages]] and the descriptors of the finding's box, in that order."""
    import dataclasses

    import pydicom

    from branet_pacs.config import load_config
    from branet_pacs.imaging.lesion_descriptors import COUNT, lesion_descriptors
    from branet_pacs.models.feature_head import FeatureHead, combine
    from branet_pacs.models.feature_head import input_widths
    from branet_pacs.models.segmenter import (LiteMedSAMSegmenter, encode_lesion_crop, lesion_crop_embedding,
                                              lesion_crop_stage_embedding, pooled_embedding)
    from branet_pacs.pipeline import Analyzer
    from branet_pacs.types import BreastImage

    torch.manual_seed(11)
    models = _models_dir_with_classifier(tmp_path, build_resnet18().eval(), modality="MG")
    rng = np.random.default_rng(12)
    labels = np.arange(40) % 2
    widths = input_widths(inputs)
    head = FeatureHead.fit(rng.normal(0, 1, (40, sum(widths))) + labels[:, None] * 0.5, labels,
                           C=(0.1, 0.2, 0.3, 0.4)[:len(widths)], blocks=widths)
    head.save(models / "mg-test" / "feature_head.safetensors")
    spec = {"file": "mg-test/feature_head.safetensors", "inputs": list(inputs),
            "sha256": file_sha256(models / "mg-test" / "feature_head.safetensors")}
    register_model(models, _entry("mg-test", "mg-test/weights.safetensors",
                                  file_sha256(models / "mg-test" / "weights.safetensors"), version="2.0.0",
                                  threshold=0.4, modality="MG", extra={"feature_head": spec}))
    image = _ellipse_lesion_image("MG", background=0.3, lesion=0.8)
    pixels = image.pixels
    analyzer = Analyzer(dataclasses.replace(load_config(), models_dir=str(models), threads=1, device="cpu"))
    assert analyzer.classifier("MG").head_inputs == inputs
    (finding,) = analyzer.find_lesions(image, [(40, 35, 140, 110)])
    segmenter = LiteMedSAMSegmenter("cpu")
    embedding = segmenter.embed(pixels)
    crop = [lesion_crop_embedding(segmenter, pixels, finding.box)] if "litemedsam-crop" in inputs else []
    if "litemedsam-crop-stages" in inputs:
        crop.append(lesion_crop_stage_embedding(encode_lesion_crop(segmenter, pixels, finding.box, stages=True)))
    row = np.concatenate([pooled_embedding(embedding, finding.mask), *crop,
                          lesion_descriptors(pixels, finding.box)])[None]
    clf = analyzer.classifier("MG")
    cnn = MalignancyClassifier(clf.entry, clf._networks, clf.device).predict_boxes(
        pixels, [finding.box], analyzer.roi_margin("MG"))
    assert finding.p_malignant == pytest.approx(float(combine(cnn, head.predict(row))[0]), abs=1e-4)


def test_staged_encoder_gives_the_plain_embedding_and_its_stage_maps() -> None:
    """`embed_with_stages` is one pass of the same encoder: its embedding is `embed`'s (the crop block's numbers do
    not change when the stage block is read too), and the stage block pools the 160- and 320-channel maps."""
    from branet_pacs.models.segmenter import (LiteMedSAMSegmenter, encode_lesion_crop, lesion_crop_embedding,
                                              lesion_crop_stage_embedding, pooled_embedding)

    image = _ellipse_lesion_image("MG", background=0.3, lesion=0.8).pixels
    segmenter = LiteMedSAMSegmenter("cpu")
    embedding, maps = segmenter.embed_with_stages(image)
    torch.testing.assert_close(embedding.features, segmenter.embed(image).features, atol=1e-4, rtol=1e-4)
    assert [tuple(m.shape) for m in maps] == [(1, 160, 64, 64), (1, 320, 64, 64)]
    box = (40, 35, 140, 110)
    crop = encode_lesion_crop(segmenter, image, box, stages=True)
    staged = lesion_crop_stage_embedding(crop)
    assert staged.shape == (960,) and np.isfinite(staged).all()
    np.testing.assert_allclose(pooled_embedding(crop.embedding, crop.mask),
                               lesion_crop_embedding(segmenter, image, box), atol=1e-4)
    with pytest.raises(ValueError, match="stages=True"):
        lesion_crop_stage_embedding(encode_lesion_crop(segmenter, image, box))
