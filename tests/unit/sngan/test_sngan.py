"""SNGAN module: networks, hinge loss, training with exact resume, generation (PNG + synthetic DICOM), FID/KID maths
and the three `branet sngan` commands, all at tiny sizes (32x32 ROIs, a few channels)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from branet_pacs.cli import main as branet_main
from branet_pacs.sngan.data import load_roi_set
from branet_pacs.sngan.features import clean_resize, make_extractor
from branet_pacs.sngan.generate import generate, load_generator, sample
from branet_pacs.sngan.losses import discriminator_hinge_loss, generator_hinge_loss, real_fake_accuracy
from branet_pacs.sngan.metrics import (
    fid_from_features,
    frechet_distance,
    kernel_inception_distance,
    polynomial_mmd2_unbiased,
    score_features,
)
from branet_pacs.sngan.networks import Discriminator, Generator, NetworkConfig
from branet_pacs.sngan.trainer import TrainSettings, latest_checkpoint, load_checkpoint, train

TINY = NetworkConfig(image_size=32, latent_dim=100, g_width=4, d_width=4, max_channels=16)




def _write_rois(root: Path, per_class: int = 6, size: int = 32, seed: int = 0) -> Path:
    """Blob-on-noise ROIs: benign = bright round blob, malignant = dark irregular blob; plus a masks/ folder."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for label, sign in (("benign", 1.0), ("malignant", -1.0)):
        (root / label / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cx, cy = rng.uniform(size * 0.3, size * 0.7, 2)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (size / 6) ** 2))
            image = 128 + sign * 90 * blob + rng.normal(0, 12, (size, size))
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / label / f"{label}_{i}.png")
        Image.fromarray(np.zeros((size, size), np.uint8)).save(root / label / "masks" / "ignored_mask.png")
    return root


def _settings(**kw) -> TrainSettings:
    return TrainSettings.for_modality("us", **{"batch_size": 4, "epochs": 2, **kw})


# ------------------------------------------------------------------------------------------------ networks + loss
def test_networks_shapes_range_and_spectral_norm():
    torch.manual_seed(0)
    g, d = Generator(TINY), Discriminator(TINY)
    z, y = torch.randn(3, 100), torch.tensor([0, 1, 1])
    images = g(z, y)
    assert images.shape == (3, 1, 32, 32)
    assert images.min() >= -1 and images.max() <= 1
    assert d(images, y).shape == (3,)
    assert all(hasattr(m, "parametrizations") for m in d.modules() if isinstance(m, (torch.nn.Conv2d,
                                                                                      torch.nn.Linear)))
    # the projection term makes D depend on the class
    assert not torch.allclose(d(images, torch.zeros(3, dtype=torch.long)), d(images, torch.ones(3, dtype=torch.long)))
    # spectral norm keeps every discriminator weight's largest singular value near 1 after a few power iterations
    d.train()
    for _ in range(20):
        d(images.detach(), y)
    conv = d.convs[1]
    sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
    assert float(sigma) == pytest.approx(1.0, abs=0.05)


def test_paper_defaults_per_modality():
    us, mg = TrainSettings.for_modality("us"), TrainSettings.for_modality("mg")
    assert (us.lr, us.beta1, us.beta2, us.batch_size) == (1.5e-4, 0.3, 0.75, 32)
    assert (mg.lr, mg.beta1, mg.beta2, mg.batch_size) == (2e-4, 0.3, 0.999, 64)
    assert NetworkConfig().latent_dim == 100 and NetworkConfig().image_size == 128
    with pytest.raises(ValueError):
        TrainSettings.for_modality("ct")


def test_hinge_loss_known_values():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # real: max(0, 1 - s) = 0, 0.5, 2 -> mean 2.5/3; fake: max(0, 1 + s) = 0, 1, 2 -> mean 1
    assert float(discriminator_hinge_loss(real, fake)) == pytest.approx(2.5 / 3 + 1.0)
    assert float(generator_hinge_loss(fake)) == pytest.approx(1.0 / 3)
    assert real_fake_accuracy(real, fake) == (pytest.approx(2 / 3), pytest.approx(1 / 3))


# ------------------------------------------------------------------------------------------------ training
def test_training_writes_checkpoints_grids_plots_with_finite_losses(tmp_path):
    data = load_roi_set(_write_rois(tmp_path / "rois"), 32)
    assert len(data) == 12 and data.class_counts() == {"benign": 6, "malignant": 6}  # masks/ ignored
    result = train(data, tmp_path / "run", TINY, _settings(ema_decay=0.9))
    assert (result.epochs_done, result.steps_done) == (2, 6)
    run = tmp_path / "run"
    for name in ("run.json", "history.csv", "losses.png", "accuracy.png", "generator.safetensors",
                 "checkpoints/epoch_0001.pt", "checkpoints/epoch_0002.safetensors", "samples/epoch_0002.png"):
        assert (run / name).is_file(), name
    ckpt = load_checkpoint(latest_checkpoint(run))
    assert ckpt["epoch"] == 2 and ckpt["step"] == 6
    assert torch.isfinite(ckpt["iterations"]).all() and ckpt["iterations"].shape == (6, 4)
    assert ckpt["generator_ema"] and not torch.equal(ckpt["generator_ema"]["fc.weight"], ckpt["generator"]["fc.weight"])
    # the EMA generator gets its own batch-norm statistics (re-estimated from its outputs), not the raw one's
    key = "bn0.bn.running_mean"
    assert not torch.allclose(ckpt["generator_ema"][key], ckpt["generator"][key])
    ema, raw = load_generator(run / "checkpoints" / "epoch_0002.pt"), load_generator(run / "checkpoints" /
                                                                                      "epoch_0002.pt", "raw")
    assert not np.array_equal(sample(ema, 2, "benign", 0), sample(raw, 2, "benign", 0))
    assert np.array_equal(sample(ema, 2, "benign", 0), sample(load_generator(run, "ema"), 2, "benign", 0))
    with pytest.raises(ValueError):
        load_generator(run / "generator.safetensors", "raw")
    grid = np.asarray(Image.open(run / "samples" / "epoch_0002.png"))
    assert grid.ndim == 2 and grid.shape[0] > 32 * 2  # two class rows of 32 px
    with pytest.raises(FileExistsError):
        train(data, run, TINY, _settings())


def _state(run: Path) -> dict:
    return load_checkpoint(latest_checkpoint(run))


def _assert_same(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.allclose(a, b, rtol=0.0, atol=0.0, equal_nan=True) if a.is_floating_point() \
            else torch.equal(a, b), where  # exact; NaN = "no generator step yet" in the loss log
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, where


def test_resume_restores_step_and_rng_bit_for_bit(tmp_path):
    data = load_roi_set(_write_rois(tmp_path / "rois"), 32)
    train(data, tmp_path / "straight", TINY, _settings(epochs=3, n_dis=2))
    for name in ("resumed_a", "resumed_b"):
        train(data, tmp_path / name, TINY, _settings(epochs=1, n_dis=2))
        first = _state(tmp_path / name)
        assert (first["epoch"], first["step"]) == (1, 3)
        result = train(data, tmp_path / name, settings=_settings(epochs=3, n_dis=2), resume=True)
        assert (result.epochs_done, result.steps_done) == (3, 9)
    straight, a, b = (_state(tmp_path / n) for n in ("straight", "resumed_a", "resumed_b"))
    for key in ("generator", "discriminator", "optimizer_g", "optimizer_d", "rng", "iterations", "fixed_z"):
        _assert_same(a[key], b[key], key)
        _assert_same(straight[key], a[key], key)
    assert torch.equal(straight["rng"]["latent"], a["rng"]["latent"])


# ------------------------------------------------------------------------------------------------ generation
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sngan")
    data = load_roi_set(_write_rois(root / "rois"), 32)
    train(data, root / "run", TINY, _settings(epochs=1))
    return root / "run"


def test_generate_png_n_files_shape_and_deterministic(tiny_run, tmp_path):
    files = generate(tiny_run / "generator.safetensors", 5, "malignant", tmp_path / "a", "png", seed=7)
    again = generate(tiny_run / "checkpoints" / "epoch_0001.safetensors", 5, "malignant", tmp_path / "b", "png", seed=7)
    other = generate(tiny_run, 5, "malignant", tmp_path / "c", "png", seed=8)
    assert len(files) == 5 and len(list((tmp_path / "a").glob("*.png"))) == 5
    for f, g, h in zip(files, again, other):
        im = Image.open(f)
        assert im.mode == "L" and im.size == (32, 32)
        assert np.array_equal(np.asarray(im), np.asarray(Image.open(g)))
    stack = lambda fs: np.stack([np.asarray(Image.open(f)) for f in fs])  # noqa: E731
    assert not np.array_equal(stack(files), stack(other))
    loaded = load_generator(tiny_run / "checkpoints" / "epoch_0001.pt")
    assert loaded.epoch == 1 and loaded.classes == ("benign", "malignant")
    assert not np.array_equal(sample(loaded, 3, "benign", 7), sample(loaded, 3, "malignant", 7))


def _dciodvfy(path: Path) -> list[str]:
    """Error lines of `dciodvfy -new` (the project's wrapper when present)."""
    try:
        from validators import dciodvfy
    except ImportError:
        proc = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True)
        return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith(("Error", "Abort"))]
    return dciodvfy(path).errors


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
def test_generate_synthetic_dicom_is_marked_and_valid(tiny_run, tmp_path):
    files = generate(tiny_run, 3, "benign", tmp_path, "dicom", seed=3)
    assert [f.suffix for f in files] == [".dcm"] * 3
    pngs = generate(tiny_run, 3, "benign", tmp_path / "png", "png", seed=3)
    uids = set()
    for dcm, png in zip(files, pngs):
        ds = pydicom.dcmread(dcm)
        assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.ConversionType == "SYN"
        assert "SYNTHETIC" in ds.SeriesDescription and "SYNTHETIC" in ds.ImageComments
        assert str(ds.PatientName) == "SYNTHETIC^BRANET" and ds.PatientID == "SYNTHETIC"
        assert ds.BurnedInAnnotation == "NO"
        assert ds.pixel_array.shape == (32, 32) and ds.pixel_array.dtype == np.uint8
        assert np.array_equal(ds.pixel_array, np.asarray(Image.open(png)))
        uids.add(ds.SOPInstanceUID)
    assert len(uids) == 3
    assert _dciodvfy(files[0]) == []


# ------------------------------------------------------------------------------------------------ FID / KID maths
def test_fid_identical_sets_is_zero():
    feats = np.random.default_rng(0).normal(size=(200, 8))
    assert fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_closed_form_gaussians():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    s1, s2 = np.diag([1.0, 2.0, 0.5, 3.0]), np.diag([2.0, 0.5, 0.5, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(np.diag(s1) + np.diag(s2) - 2 * np.sqrt(np.diag(s1) * np.diag(s2)))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    # non-diagonal: both covariances rotated by the same orthogonal matrix leave the distance unchanged
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    assert frechet_distance(q @ mu1, q @ s1 @ q.T, q @ mu2, q @ s2 @ q.T) == pytest.approx(expected, rel=1e-7)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s
    assert frechet_distance(np.array([0.0]), np.array([[4.0]]), np.array([3.0]), np.array([[1.0]])) == \
        pytest.approx(9.0 + 1.0)
    # sampled features approach the closed form
    a = rng.multivariate_normal(mu1, s1, size=20000)
    b = rng.multivariate_normal(mu2, s2, size=20000)
    assert fid_from_features(a, b) == pytest.approx(expected, rel=0.05)


def test_kid_unbiased_estimator_hand_computed_case():
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.array([[1.0, 1.0], [0.0, 0.0]])
    k = lambda a, b: (a @ b / 2 + 1) ** 3  # noqa: E731
    # off-diagonal within-set pairs, both orders, over m(m-1) = 2; cross pairs over m^2 = 4
    kxx = 2 * k(x[0], x[1]) / 2
    kyy = 2 * k(y[0], y[1]) / 2
    kxy = sum(k(a, b) for a in x for b in y) / 4
    expected = kxx + kyy - 2 * kxy
    assert expected == pytest.approx(1.0 + 1.0 - 2 * (3.375 + 1 + 3.375 + 1) / 4)
    assert polynomial_mmd2_unbiased(x, y) == pytest.approx(expected)
    # with subsets as large as the sets, every subset is the whole set: the mean is that value, the std 0
    mean, std = kernel_inception_distance(x, y, num_subsets=5)
    assert mean == pytest.approx(expected) and std == pytest.approx(0.0)


def test_kid_same_distribution_near_zero_and_different_positive():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    same, same_std = kernel_inception_distance(a, b, num_subsets=20, max_subset_size=200)
    shifted, _ = kernel_inception_distance(a, b + 1.0, num_subsets=20, max_subset_size=200)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 0.5 and shifted > 50 * abs(same)
    result = score_features(a, b + 1.0, "toy", kid_subsets=10, kid_subset_size=100)
    assert result.fid == pytest.approx(16.0, rel=0.15) and "FID[toy]" in result.summary()


# ------------------------------------------------------------------------------------------------ features
def test_clean_resize_matches_pil_float_bicubic():
    pixels = np.random.default_rng(3).integers(0, 256, (32, 32), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(pixels.astype(np.float32), mode="F").resize((64, 64), Image.BICUBIC))
    out = clean_resize(pixels, 64)
    assert out.dtype == np.float32 and out.shape == (64, 64)
    np.testing.assert_allclose(out, expected.clip(0, 255))
    assert np.array_equal(clean_resize(pixels, 32), pixels.astype(np.float32))


def test_litemedsam_extractor_gives_256d_pooled_features():
    extractor = make_extractor("litemedsam")
    assert extractor.name == "litemedsam" and extractor.input_size == 256
    images = np.random.default_rng(4).integers(0, 256, (1, 128, 128), dtype=np.uint8)
    feats = extractor(images)
    assert feats.shape == (1, 256) and np.isfinite(feats).all() and feats.std() > 0


def test_classifier_extractor_penultimate_512d(tmp_path):
    from branet_pacs.models.classifier import build_resnet18, save_classifier

    torch.manual_seed(0)
    save_classifier(build_resnet18(), tmp_path / "m" / "weights.safetensors", half=False)
    extractor = make_extractor(f"classifier:{tmp_path / 'm'}")
    images = np.random.default_rng(5).integers(0, 256, (3, 128, 128), dtype=np.uint8)
    feats = extractor(images, batch_size=2)
    assert extractor.name == "classifier:m" and feats.shape == (3, 512) and (feats >= 0).all()  # post-ReLU pool
    assert np.allclose(extractor(images[:1]), feats[:1], atol=1e-5)


def test_inception_extractor_reads_user_weights(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=False, init_weights=False)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "inception.safetensors"))
    extractor = make_extractor(f"inception:{tmp_path / 'inception.safetensors'}")
    feats = extractor(np.random.default_rng(6).integers(0, 256, (2, 64, 64), dtype=np.uint8))
    assert extractor.name == "inception" and feats.shape == (2, 2048)
    with pytest.raises(ValueError):
        make_extractor("vgg")


def test_inception_extractor_reads_fid_pt_inception_layout(tmp_path):
    """pytorch-fid's 1008-class FID Inception layout (pt_inception weights), built without any download."""
    pytest.importorskip("pytorch_fid")
    from safetensors.torch import save_file

    from branet_pacs.sngan.features import _fid_inception

    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in _fid_inception(1008).state_dict().items()}
    save_file(state, str(tmp_path / "pt_inception.safetensors"))
    feats = make_extractor(f"inception:{tmp_path / 'pt_inception.safetensors'}")(
        np.random.default_rng(7).integers(0, 256, (1, 64, 64), dtype=np.uint8))
    assert feats.shape == (1, 2048) and np.isfinite(feats).all()


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_train_generate_score(tmp_path, capsys):
    from branet_pacs.models.classifier import build_resnet18, save_classifier

    rois = _write_rois(tmp_path / "rois", per_class=4)
    run = tmp_path / "run"
    common = ["--data", str(rois), "--modality", "us", "--out", str(run), "--image-size", "32", "--width", "4",
              "--batch-size", "4", "--threads", "1", "--device", "cpu", "--precision", "bf16"]
    assert branet_main(["sngan", "train", *common, "--epochs", "1"]) == 0
    # resume needs no architecture options: they come from the checkpoint (32 px, width 4, bf16)
    assert branet_main(["sngan", "train", "--data", str(rois), "--modality", "us", "--out", str(run), "--epochs", "2",
                        "--resume", "--threads", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1])["epochs"] == 2 and json.loads(out[-1])["steps"] == 4
    ckpt = load_checkpoint(latest_checkpoint(run))
    assert ckpt["settings"]["precision"] == "bf16" and torch.isfinite(ckpt["iterations"][:, 0]).all()
    fake = tmp_path / "fake"
    for label in ("benign", "malignant"):
        assert branet_main(["sngan", "generate", "--checkpoint", str(run / "generator.safetensors"), "--n", "4",
                            "--label", label, "--out", str(fake / label), "--seed", "1", "--threads", "1"]) == 0
    assert len(list(fake.rglob("*.png"))) == 8
    torch.manual_seed(0)
    save_classifier(build_resnet18(), tmp_path / "clf" / "weights.safetensors", half=False)
    report = tmp_path / "score.json"
    assert branet_main(["sngan", "score", "--real", str(rois), "--fake", str(fake), "--features",
                        f"classifier:{tmp_path / 'clf'}", "--kid-subsets", "5", "--json", str(report),
                        "--cache", str(tmp_path / "cache"), "--threads", "1", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    scores = json.loads(report.read_text())
    assert "FID[classifier:clf]" in printed and scores["n_real"] == 8 and scores["n_fake"] == 8
    assert np.isfinite(scores["fid"]) and scores["fid"] > 0
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    # identical folders score FID ~ 0 through the whole command path
    assert branet_main(["sngan", "score", "--real", str(rois), "--fake", str(rois), "--features",
                        f"classifier:{tmp_path / 'clf'}", "--kid-subsets", "5", "--json", str(report),
                        "--threads", "1", "--device", "cpu"]) == 0
    assert json.loads(report.read_text())["fid"] == pytest.approx(0.0, abs=1e-3)
