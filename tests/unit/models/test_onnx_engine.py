"""ONNX Runtime engine: the exported graphs give the eager answers (real LiteMedSAM, classifier, detector), are
cached with a checksum, re-exported when tampered with, and a failed export falls back to PyTorch."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from branet_pacs.models import onnx_engine
from branet_pacs.models.runtime import Engine
from branet_pacs.models.segmenter import LiteMedSAMSegmenter


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


def _ellipse_image() -> np.ndarray:
    yy, xx = np.mgrid[:180, :240]
    image = np.full((180, 240), 0.6, np.float32) + np.random.default_rng(0).normal(0, 0.03, (180, 240)).astype("f")
    image[(yy - 60) ** 2 / 25 ** 2 + (xx - 70) ** 2 / 35 ** 2 < 1] = 0.1
    image[(yy - 120) ** 2 / 20 ** 2 + (xx - 170) ** 2 / 30 ** 2 < 1] = 0.15
    return image.clip(0, 1)


def test_litemedsam_on_onnx_runtime_gives_the_eager_masks(cache: Path) -> None:
    eager = LiteMedSAMSegmenter("cpu")
    onnx = LiteMedSAMSegmenter("cpu", Engine("onnx", threads=1, cache_dir=str(cache)))
    assert isinstance(onnx._encoder, onnx_engine.OnnxFunction) and isinstance(onnx._decoder, onnx_engine.OnnxFunction)
    image = _ellipse_image()
    a, b = eager.embed(image), onnx.embed(image)
    assert float((a.features - b.features).abs().max()) < 1e-3
    boxes = [(30, 30, 110, 90), (135, 95, 205, 145), (5, 5, 60, 40)]   # three prompts: a dynamic batch
    for x, y in zip(eager.decode(a, boxes), onnx.decode(b, boxes)):
        assert 2 * (x & y).sum() / max(1, x.sum() + y.sum()) > 0.99
    assert sorted(p.name.split("-")[1] for p in cache.glob("litemedsam-*.onnx")) == ["box", "encoder"]


def test_classifier_and_detector_graphs_match_eager_for_any_batch(tmp_path: Path, cache: Path) -> None:
    from branet_pacs.models.classifier import MalignancyClassifier, build_resnet18
    from branet_pacs.models.detector import DetectorSpec, HeatmapEnsemble, LesionDetector, TinyUNet
    from branet_pacs.models.manifest import ModelEntry

    torch.manual_seed(0)
    entry = ModelEntry(name="us-t", kind="classifier", modality="US", version="1", file="x", sha256="0" * 64,
                       threshold=0.5, input={"size": 128}, extra={"tta": True})
    nets = [build_resnet18().eval(), build_resnet18().eval()]
    rois = np.random.default_rng(1).uniform(-1, 1, (70, 128, 128)).astype(np.float32)   # batches of 64 and 6
    eager = MalignancyClassifier(entry, nets, torch.device("cpu")).predict(rois)
    onnx = MalignancyClassifier(entry, nets, torch.device("cpu"), engine=Engine("onnx", 1, str(cache)))
    assert isinstance(onnx._forward, onnx_engine.OnnxFunction)
    np.testing.assert_allclose(onnx.predict(rois), eager, atol=1e-5)

    spec = DetectorSpec(size=64, channels=(8, 16, 32, 64))
    net = HeatmapEnsemble([TinyUNet(spec.channels).eval(), TinyUNet(spec.channels).eval()])
    detector = LesionDetector(net=net, spec=spec, name="d", version="1", modality="US")
    image = _ellipse_image()
    expected = detector.heatmap(image)
    detector.use_engine(Engine("onnx", 1, str(cache)))
    assert isinstance(detector._forward, onnx_engine.OnnxFunction)
    np.testing.assert_allclose(detector.heatmap(image), expected, atol=1e-5)


def test_cached_graphs_are_reused_and_a_tampered_one_is_made_again(tmp_path: Path, monkeypatch) -> None:
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
    example = [torch.ones(2, 4)]
    first = onnx_engine.compile_module(module, example, name="toy", digest="d1", threads=1, cache_dir=tmp_path,
                                       dynamic=(0,))
    np.testing.assert_allclose(first(torch.ones(5, 4)).numpy(), module(torch.ones(5, 4)).detach().numpy(), atol=1e-6)
    calls = []
    real_export = onnx_engine._export
    monkeypatch.setattr(onnx_engine, "_export", lambda *a: calls.append(a) or real_export(*a))
    onnx_engine._sessions.clear()
    onnx_engine.compile_module(module, example, name="toy", digest="d1", threads=1, cache_dir=tmp_path, dynamic=(0,))
    assert calls == []                                    # loaded from the cache after its checksum held
    first.path.write_bytes(first.path.read_bytes() + b"tampered")
    onnx_engine._sessions.clear()
    onnx_engine.compile_module(module, example, name="toy", digest="d1", threads=1, cache_dir=tmp_path, dynamic=(0,))
    assert len(calls) == 1                                # checksum failed: exported again
    onnx_engine.compile_module(module, example, name="toy", digest="other weights", threads=1, cache_dir=tmp_path,
                               dynamic=(0,))
    assert len(calls) == 2 and len(list(tmp_path.glob("toy-*.onnx"))) == 2


def test_a_failed_export_falls_back_to_pytorch_with_a_warning(tmp_path: Path, monkeypatch, caplog) -> None:
    module = torch.nn.Linear(4, 2).eval()

    def broken(*args):
        raise RuntimeError("exporter broke")

    monkeypatch.setattr(onnx_engine, "_export", broken)
    with caplog.at_level(logging.WARNING):
        forward = onnx_engine.compiled_or_module(module, [torch.ones(1, 4)], engine=Engine("onnx", 1, str(tmp_path)),
                                                 name="toy", digest="d", device=torch.device("cpu"))
    assert forward is module and "exporter broke" in caplog.text and "using PyTorch" in caplog.text
    assert onnx_engine.compiled_or_module(module, [torch.ones(1, 4)], engine=Engine("torch"), name="toy", digest="d",
                                          device=torch.device("cpu")) is module
    with pytest.raises(ValueError, match="unknown engine"):
        Engine("tensorrt")
