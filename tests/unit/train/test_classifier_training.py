"""`branet train` on tiny synthetic ROI sets: loss falls, outputs written and registered, resume, synthetic ROIs
only in training folds."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from branet_pacs.datasets.rois import load_roi_set
from branet_pacs.models.classifier import MalignancyClassifier
from branet_pacs.models.manifest import file_sha256, find_model
from branet_pacs.train import cards
from branet_pacs.models.feature_head import combine
from branet_pacs.train import classifier as trainer
from branet_pacs.train.augment import augment_rois, augment_settings
from branet_pacs.train.classifier import SYNTHETIC_PREFIX, ClassifierTrainSettings, fit, train_model

SETTINGS = ClassifierTrainSettings(modality="us", folds=2, epochs=2, patience=5, batch_size=6, lr=1e-3, threads=1,
                         device="cpu", synthetic_ratio=0.5)


def _toy_rois(root: Path, n_per_class: int, seed: int, with_manifest: bool = False) -> Path:
    """Benign = bright disc, malignant = bright cross: separable by shape, not by mean intensity."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:128, :128]
    rows = []
    for label in ("benign", "malignant"):
        for i in range(n_per_class):
            img = rng.normal(70, 15, (128, 128))
            cy, cx = 64 + rng.integers(-8, 9), 64 + rng.integers(-8, 9)
            if label == "benign":
                img[np.hypot(yy - cy, xx - cx) < 22] += 120
            else:
                img[(abs(yy - cy) < 26) & (abs(xx - cx) < 6)] += 120
                img[(abs(xx - cx) < 26) & (abs(yy - cy) < 6)] += 120
            path = root / label / f"{label[0]}{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path)
            rows.append((f"{label}/{path.name}", f"{label}/{path.name}", label, f"g{i // 2}", "0 0 1 1"))
    if with_manifest:
        with open(root / "manifest.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["roi_file", "source", "label", "group", "box"])
            writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("train")
    data = _toy_rois(base / "data", 6, seed=0, with_manifest=True)
    synthetic = _toy_rois(base / "synthetic", 3, seed=1)
    out = base / "models" / "toy-us"
    settings = dataclasses.replace(SETTINGS, roi_jitter=0.2, margin_views=(0.1, 0.15, 0.3))
    doc = train_model(data, out, settings, synthetic_dir=synthetic, version="0.0.1")
    return {"data": data, "synthetic": synthetic, "out": out, "doc": doc, "settings": settings}


def test_loss_falls_on_separable_data(tmp_path: Path) -> None:
    data = load_roi_set(_toy_rois(tmp_path / "data", 6, seed=2))
    x, y = torch.from_numpy(data.pixels), torch.from_numpy(data.labels)
    settings = ClassifierTrainSettings(modality="us", epochs=5, batch_size=6, lr=1e-3, threads=1)
    cpu = torch.device("cpu")
    run, _ = fit("t", x, y, settings, tmp_path / "ckpt", seed=0, device=cpu,
                 amp=trainer.autocast_dtype(cpu, "auto"), resume=False, stop_after=5)
    losses = [h["train_loss"] for h in run.history]
    assert len(losses) == 5
    assert np.mean(losses[-2:]) < 0.7 * np.mean(losses[:2])


def test_outputs_written_and_registered(trained: dict) -> None:
    out, doc = trained["out"], trained["doc"]
    for name in ("weights.safetensors", "metrics.json", "MODEL_CARD.md", "history.png", "roc.png",
                 "confusion_matrix.png", "oof_predictions.csv"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["folds"]) == 2
    for name in ("accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity", "precision", "f1",
                 "cohen_kappa"):
        assert set(metrics["summary"][name]) >= {"mean", "sd"}
        assert all(name in fold for fold in metrics["folds"])
    assert all(np.array(f["confusion_matrix"]).sum() == f["n"] for f in metrics["folds"])
    assert sum(f["n"] for f in metrics["folds"]) == 12          # every real ROI validated exactly once
    entry = find_model(out.parent, "classifier", "US", name="toy-us")
    assert entry.sha256 == file_sha256(out / "weights.safetensors")
    assert entry.threshold == pytest.approx(doc["threshold"], abs=1e-6)
    assert entry.input["size"] == 128 and entry.version == "0.0.1"
    assert entry.input["tta_margins"] == [0.1, 0.15, 0.3]
    assert entry.input["window"] == "roi"          # a folder without a recorded window was cut with the default
    classifier = MalignancyClassifier.load(out.parent, "US", device="cpu", name="toy-us")
    p = classifier.predict(load_roi_set(trained["data"]).as_float())
    assert p.shape == (12,) and np.all((p >= 0) & (p <= 1))
    assert classifier.margin_views == (0.1, 0.15, 0.3)
    card = (out / "MODEL_CARD.md").read_text()
    assert "Research use only" in card and "ROI jitter 0.2" in card and "margins 0.1, 0.15, 0.3" in card


def test_synthetic_rois_only_in_training_folds(trained: dict) -> None:
    ckpt = trained["out"] / "checkpoints"
    synthetic_names = {SYNTHETIC_PREFIX + f for f in load_roi_set(trained["synthetic"]).files}
    for k in (1, 2):
        plan = json.loads((ckpt / f"fold{k}" / "plan.json").read_text())
        assert plan["synthetic"] and set(plan["synthetic"]) <= synthetic_names
        assert not set(plan["val"]) & set(plan["synthetic"])
        assert not set(plan["val"]) & set(plan["train"])
        assert all(not f.startswith(SYNTHETIC_PREFIX) for f in plan["val"])
        done = json.loads((ckpt / f"fold{k}" / "done.json").read_text())
        assert done["val_files"] == plan["val"] and done["n_synthetic"] == len(plan["synthetic"])
    oof = (trained["out"] / "oof_predictions.csv").read_text()
    assert "synthetic" not in oof


def test_groups_never_straddle_folds(trained: dict) -> None:
    ckpt = trained["out"] / "checkpoints"
    groups = {f: g for f, g in zip(*(lambda s: (s.files, s.groups))(load_roi_set(trained["data"])))}
    val_groups = [{groups[f] for f in json.loads((ckpt / f"fold{k}" / "plan.json").read_text())["val"]}
                  for k in (1, 2)]
    assert not val_groups[0] & val_groups[1]


def test_resume_continues_where_it_stopped(tmp_path: Path) -> None:
    data = load_roi_set(_toy_rois(tmp_path / "data", 3, seed=3))
    x, y = torch.from_numpy(data.pixels), torch.from_numpy(data.labels)
    settings = ClassifierTrainSettings(modality="us", epochs=3, batch_size=3, threads=1, precision="fp32")
    cpu = torch.device("cpu")
    straight, _ = fit("a", x, y, settings, tmp_path / "a", 0, cpu, None, resume=False, stop_after=3)
    fit("b", x, y, settings, tmp_path / "b", 0, cpu, None, resume=False, stop_after=2)     # "interrupted"
    resumed, _ = fit("b", x, y, settings, tmp_path / "b", 0, cpu, None, resume=True, stop_after=3)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.history[2]["train_loss"] == pytest.approx(straight.history[2]["train_loss"], rel=1e-4)
    for (_, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)


def test_resume_of_a_finished_run_reuses_folds_and_refuses_silent_overwrite(trained: dict, monkeypatch) -> None:
    settings = trained["settings"]
    with pytest.raises(FileExistsError):
        train_model(trained["data"], trained["out"], settings, synthetic_dir=trained["synthetic"], register=False)

    def no_training(*args, **kwargs):
        if kwargs.get("val") is not None:
            raise AssertionError("a finished fold was trained again")
        return real_fit(*args, **kwargs)

    real_fit = trainer.fit
    monkeypatch.setattr(trainer, "fit", no_training)
    doc = train_model(trained["data"], trained["out"], settings, synthetic_dir=trained["synthetic"], resume=True,
                      version="0.0.1", register=False)
    assert doc["oof"] == trained["doc"]["oof"]
    with pytest.raises(ValueError):
        train_model(trained["data"], trained["out"], dataclasses.replace(settings, lr=0.5),
                    synthetic_dir=trained["synthetic"], resume=True, register=False)


def test_intensity_augmentation_widens_gamma_and_contrast_without_blur_or_resampling() -> None:
    plain, intensity = augment_settings("mg"), augment_settings("mg", intensity=True)
    scanner = augment_settings("mg", scanner=True)
    assert intensity.gamma[0] < plain.gamma[0] and intensity.gamma[1] > plain.gamma[1]
    assert intensity.contrast[0] < plain.contrast[0] and intensity.contrast[1] > plain.contrast[1]
    assert (intensity.blur, intensity.resolution) == (plain.blur, plain.resolution) == (0.0, 1.0)
    assert (scanner.gamma, scanner.contrast) == (intensity.gamma, intensity.contrast) and scanner.blur > 0


def test_augmentation_keeps_range_and_changes_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    batch = torch.rand(6, 1, 128, 128) * 2 - 1
    for modality in ("us", "mg"):
        out = augment_rois(batch, augment_settings(modality), g)
        assert out.shape == batch.shape and out.min() >= -1 and out.max() <= 1
        assert not torch.allclose(out, batch)
    assert augment_settings("us").vflip is False and augment_settings("mg").vflip is True


def test_roi_jitter_widens_zoom_and_shift_only() -> None:
    plain, jittered = augment_settings("us"), augment_settings("us", roi_jitter=0.25)
    assert plain == augment_settings("us", roi_jitter=0.0)
    assert jittered.scale == (pytest.approx(0.8), 1.25) and jittered.translate == 0.125
    assert jittered.speckle == plain.speckle and jittered.rotate_deg == plain.rotate_deg
    assert augment_settings("mg", roi_jitter=0.05).scale == augment_settings("mg").scale   # never narrower


def test_split_seed_keeps_the_folds_while_the_initialisation_changes(tmp_path: Path) -> None:
    data = _toy_rois(tmp_path / "data", 6, seed=3, with_manifest=True)
    base = dataclasses.replace(SETTINGS, synthetic_ratio=0.0, epochs=1)
    runs = {}
    for name, settings in (("a", base), ("b", dataclasses.replace(base, seed=7, split_seed=0))):
        train_model(data, tmp_path / name, settings, register=False, version="0")
        runs[name] = [json.loads((tmp_path / name / "checkpoints" / f"fold{k}" / "done.json").read_text())
                      for k in (1, 2)]
    val = {name: [sorted(fold["val_files"]) for fold in folds] for name, folds in runs.items()}
    assert val["a"] == val["b"]
    assert [f["p_val"] for f in runs["a"]] != [f["p_val"] for f in runs["b"]]   # another initialisation


def test_ema_weights_are_the_ones_kept_and_survive_resume(tmp_path: Path) -> None:
    data = load_roi_set(_toy_rois(tmp_path / "data", 3, seed=4))
    x, y = torch.from_numpy(data.pixels), torch.from_numpy(data.labels)
    settings = ClassifierTrainSettings(modality="us", epochs=3, batch_size=3, threads=1, precision="fp32", ema=0.9)
    cpu = torch.device("cpu")
    straight, _ = fit("a", x, y, settings, tmp_path / "a", 0, cpu, None, resume=False, stop_after=3)
    assert straight.ema is not None
    # the final network is the weight average, not the last optimiser step
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, straight.ema.module.state_dict()[key])
    fresh = trainer._new_run(settings, 1, 0, cpu)
    assert not torch.allclose(straight.model.conv1.weight, fresh.model.conv1.weight)
    fit("b", x, y, settings, tmp_path / "b", 0, cpu, None, resume=False, stop_after=2)
    resumed, _ = fit("b", x, y, settings, tmp_path / "b", 0, cpu, None, resume=True, stop_after=3)
    for (_, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)


def test_mixup_changes_the_batches_repeatably(tmp_path: Path) -> None:
    data = load_roi_set(_toy_rois(tmp_path / "data", 3, seed=5))
    x, y = torch.from_numpy(data.pixels), torch.from_numpy(data.labels)
    settings = ClassifierTrainSettings(modality="us", epochs=2, batch_size=3, threads=1, precision="fp32", mixup=0.4)
    cpu = torch.device("cpu")
    runs = {name: fit(name, x, y, replace, tmp_path / name, seed=0, device=cpu, amp=None, resume=False,
                      stop_after=2)[0]
            for name, replace in (("m1", settings), ("m2", settings),
                                  ("plain", dataclasses.replace(settings, mixup=0.0)))}
    losses = {name: [h["train_loss"] for h in run.history] for name, run in runs.items()}
    assert all(np.isfinite(losses["m1"]))
    assert losses["m1"] == pytest.approx(losses["m2"], rel=1e-5)          # the mixes come from the run's seed
    assert losses["m1"][0] != pytest.approx(losses["plain"][0], rel=1e-3)  # ... and they do change the batches


def test_model_card_names_the_training_recipe() -> None:
    text = cards._recipe_text({"roi_jitter": 0.25, "mixup": 0.2, "ema": 0.98})
    assert "ROI jitter 0.25" in text and "mixup Beta(0.2, 0.2)" in text and "decay 0.98" in text
    assert cards._recipe_text({}) == ""


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_init_from_torchvision_layout_sums_the_stem_and_drops_the_head(tmp_path: Path, suffix: str) -> None:
    from safetensors.torch import save_file
    from torchvision.models import resnet18

    torch.manual_seed(0)
    imagenet_like = resnet18(weights=None).state_dict()     # 3-channel stem, 1000-class head
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in imagenet_like.items()}, str(path))
    else:
        torch.save(imagenet_like, path)
    state = trainer.initial_state(path, dropout=0.5)
    assert state["conv1.weight"].shape == (64, 1, 7, 7)
    assert torch.allclose(state["conv1.weight"], imagenet_like["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(state["layer4.1.conv2.weight"], imagenet_like["layer4.1.conv2.weight"])
    assert state["fc.1.weight"].shape == (2, 512)
    run = trainer._new_run(dataclasses.replace(SETTINGS, init=str(path)), 1, 0, torch.device("cpu"))
    assert torch.allclose(run.model.layer1[0].conv1.weight, imagenet_like["layer1.0.conv1.weight"])


def test_init_refuses_what_is_not_a_resnet18(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"fc.weight": torch.zeros(2, 3), "conv1.weight": torch.zeros(8, 3, 3, 3)}, str(path))
    with pytest.raises(ValueError, match="not a ResNet18"):
        trainer.initial_state(path, dropout=0.5)
    pickled = tmp_path / "object.pth"
    torch.save({"note": "not tensors", "fc.weight": torch.zeros(1)}, pickled)
    with pytest.raises(ValueError, match="state dict of tensors"):
        trainer.initial_state(pickled, dropout=0.5)
    headless = tmp_path / "headless.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, headless)
    with pytest.raises(ValueError, match="torchvision's layout"):
        trainer.initial_state(headless, dropout=0.5)


def test_init_from_one_of_our_classifiers_keeps_every_weight(tmp_path: Path) -> None:
    from branet_pacs.models.classifier import build_resnet18, save_classifier

    torch.manual_seed(1)
    first, second = build_resnet18(), build_resnet18()
    path = tmp_path / "ensemble.safetensors"
    save_classifier([first, second], path, half=False)
    state = trainer.initial_state(path, dropout=0.5)
    for key, value in first.state_dict().items():
        assert torch.equal(state[key], value), key


def _site(root: Path, site: str, n: int, seed: int, window: str = "roi", lesion_box: str = "mask") -> Path:
    _toy_rois(root, n, seed=seed, with_manifest=True)
    (root / "prepare.json").write_text(json.dumps({"dataset": site, "margin": 0.15, "window": window,
                                                   "lesion_box": lesion_box}))
    return root


@pytest.mark.parametrize("key, value, mixed, attribute", [
    ("window", "tissue", "different ROI windows", "roi_window"),
    ("lesion_box", "prompt", "different ROI lesion boxes", "lesion_box")])
def test_how_the_rois_were_cut_is_recorded_for_the_pipeline_and_never_mixed(tmp_path: Path, key, value, mixed,
                                                                           attribute) -> None:
    chosen = _site(tmp_path / "c", "site-c", 4, seed=5, **{key: value})
    default = _site(tmp_path / "d", "site-d", 4, seed=6)
    settings = dataclasses.replace(SETTINGS, modality="mg", synthetic_ratio=0.0, epochs=1)
    with pytest.raises(ValueError, match=mixed):
        train_model([chosen, default], tmp_path / "models" / "mixed", settings, version="0.0.1", register=False)
    out = tmp_path / "models" / "toy-mg"
    train_model(chosen, out, settings, version="0.0.1")
    entry = find_model(out.parent, "classifier", "MG", name="toy-mg")
    assert entry.input[key] == value
    assert getattr(MalignancyClassifier.load(out.parent, "MG", device="cpu", name="toy-mg"), attribute) == value
    assert f'{key} "{value}"' in (out / "MODEL_CARD.md").read_text()
    if key == "window":
        assert "tissue 1st-99th percentiles" in entry.input["normalisation"]


def test_two_sites_pool_into_one_grouped_cv_with_per_site_figures(tmp_path: Path) -> None:
    a, b = _site(tmp_path / "a", "site-a", 6, seed=3), _site(tmp_path / "b", "site-b", 4, seed=4)
    settings = dataclasses.replace(SETTINGS, synthetic_ratio=0.0, epochs=1)
    doc = train_model([a, b], tmp_path / "models" / "two-site", settings, version="0.0.1", register=False)
    assert doc["data"]["sites"] == ["site-a", "site-b"] and doc["data"]["dataset"] == "site-a+site-b"
    assert set(doc["oof_by_site"]) == {"site-a", "site-b"} and doc["oof_by_site"]["site-b"]["n"] == 8
    oof = (tmp_path / "models" / "two-site" / "oof_predictions.csv").read_text()
    assert "site-a/benign/b00.png" in oof and "site-b/benign/b00.png" in oof   # same file names, two sites
    for plan in (tmp_path / "models" / "two-site" / "checkpoints").glob("fold*/plan.json"):
        fold = json.loads(plan.read_text())
        groups = lambda files: {f.rsplit("/", 1)[0] + "/" + f"g{int(f[-6:-4]) // 2}" for f in files}  # noqa: E731
        assert not groups(fold["train"]) & groups(fold["val"]), "a group of one site never straddles folds"
    assert "## Site by site" in (tmp_path / "models" / "two-site" / "MODEL_CARD.md").read_text()


def test_leave_one_site_out_scores_each_site_with_a_model_that_never_saw_it(tmp_path: Path) -> None:
    a, b = _site(tmp_path / "a", "site-a", 6, seed=5), _site(tmp_path / "b", "site-b", 6, seed=6)
    settings = dataclasses.replace(SETTINGS, synthetic_ratio=0.0, epochs=1)
    report = trainer.leave_one_site_out([a, b], tmp_path / "loso", settings)
    assert set(report["held_out"]) == {"site-a", "site-b"}
    for site, other in (("site-a", "site-b"), ("site-b", "site-a")):
        held = report["held_out"][site]
        assert held["trained_on"] == [other] and held["n"] == 12 and held["n_train"] == 12
        plans = [json.loads(p.read_text()) for p in (tmp_path / "loso" / f"without-{site}").glob("checkpoints/*/plan.json")]
        assert plans and all(not any(f.startswith(site + "/") for f in p["train"] + p["val"]) for p in plans)
        assert (tmp_path / "loso" / f"without-{site}" / f"predictions-{site}.csv").read_text().count("\n") == 13
    assert json.loads((tmp_path / "loso" / "leave-one-site-out.json").read_text())["sites"] == ["site-a", "site-b"]
    with pytest.raises(ValueError, match="two sites"):
        trainer.leave_one_site_out([a], tmp_path / "one", settings)


def _fake_features(roots, device="cpu", inputs=("litemedsam",)):
    """Stands in for LiteMedSAM and the descriptors (tested on real images in test_lesion_features and
    test_lesion_descriptors): features that carry the label, as wide as the inputs' blocks."""
    from branet_pacs.models.feature_head import input_widths

    labels = np.concatenate([trainer.load_roi_set(r).labels for r in roots])
    width = sum(input_widths(inputs))
    features = np.random.default_rng(len(labels)).normal(0, 1, (len(labels), width)).astype(np.float32)
    features += labels[:, None] * 1.0
    return features


def test_feature_head_is_fitted_on_the_same_folds_and_shipped_beside_the_cnn(tmp_path: Path, monkeypatch) -> None:
    from branet_pacs.models.classifier import MalignancyClassifier

    monkeypatch.setattr(trainer, "roi_features", _fake_features)
    a = _site(tmp_path / "a", "site-a", 6, seed=7)
    settings = dataclasses.replace(SETTINGS, synthetic_ratio=0.0, epochs=1, feature_head=True)
    out = tmp_path / "models" / "with-head"
    doc = train_model([a], out, settings, version="0.0.1")
    assert set(doc["oof_parts"]) == {"cnn_only", "feature_head_only"}
    header, first = (out / "oof_predictions.csv").read_text().splitlines()[:2]
    assert header == "file,truth,p_malignant,fold,p_cnn,p_head"        # the parts, for analyses that take it apart
    p, p_cnn, p_head = (float(v) for v in first.split(",")[2:3] + first.split(",")[4:6])
    assert p == pytest.approx(float(combine(np.array([p_cnn]), np.array([p_head]))[0]), abs=2e-6)
    assert doc["oof_parts"]["feature_head_only"]["roc_auc"] > 0.9          # the fake features carry the label
    for fold in (1, 2):
        assert (out / "checkpoints" / f"fold{fold}" / "feature_head.safetensors").is_file()
    clf = MalignancyClassifier.load(tmp_path / "models", "US", device="cpu")
    assert clf.feature_head is not None and len(clf.weights_sha256) == 2
    assert "**Feature head.**" in (out / "MODEL_CARD.md").read_text()
    # the head does not change the CNN's folds: the same run resumes without it, and with a two-block head (the MG
    # recipe: LiteMedSAM + lesion descriptors, a C each), which the manifest names and the classifier reads
    train_model([a], out, dataclasses.replace(settings, feature_head=False), resume=True, version="0.0.1",
                register=False)
    two = dataclasses.replace(settings, feature_head_inputs=("litemedsam", "lesion-descriptors"),
                              feature_head_c=(0.003, 0.1))
    doc = train_model([a], out, two, resume=True, version="0.0.2")
    clf = MalignancyClassifier.load(tmp_path / "models", "US", device="cpu")
    assert clf.version == "0.0.2" and clf.head_inputs == ("litemedsam", "lesion-descriptors")
    assert clf.feature_head.widths == (512, 53) and doc["oof_parts"]["feature_head_only"]["roc_auc"] > 0.9
    assert "hand-made descriptors" in (out / "MODEL_CARD.md").read_text()
    # the CNN weight picked out of fold (the fake features carry the label, the 1-epoch CNN next to nothing): the
    # figures use the weight picked without each fold, the manifest the one picked on all; the CNN folds resume
    doc = train_model([a], out, dataclasses.replace(two, cnn_weight=None), resume=True, version="0.0.3")
    weight = doc["cnn_weight"]
    assert weight["method"] != "fixed" and len(weight["per_fold"]) == 2 and 0.0 <= weight["shipped"] <= 1.0
    clf = MalignancyClassifier.load(tmp_path / "models", "US", device="cpu")
    assert clf.version == "0.0.3" and clf.cnn_weight == weight["shipped"]
    assert "picked on the out-of-fold predictions" in (out / "MODEL_CARD.md").read_text()
    # a checkpoint folder written before a training setting existed resumes as if it had its default
    signature = out / "checkpoints" / "signature.json"
    stored = json.loads(signature.read_text())
    del stored["settings"]["intensity_aug"]
    signature.write_text(json.dumps(stored))
    train_model([a], out, two, resume=True, version="0.0.4", register=False)


def test_leave_one_site_out_with_the_head_reports_each_part_and_registers_its_models(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    monkeypatch.setattr(trainer, "roi_features", _fake_features)
    a, b = _site(tmp_path / "a", "site-a", 6, seed=8), _site(tmp_path / "b", "site-b", 6, seed=9)
    settings = dataclasses.replace(SETTINGS, synthetic_ratio=0.0, epochs=1, feature_head=True)
    report = trainer.leave_one_site_out([a, b], tmp_path / "loso", settings)
    for site in ("site-a", "site-b"):
        held = report["held_out"][site]
        assert {"cnn_only_roc_auc", "feature_head_only_roc_auc"} <= set(held)
    from branet_pacs.models.manifest import read_manifest

    names = {e.name for e in read_manifest(tmp_path / "loso")}
    assert names == {"without-site-a", "without-site-b"}                     # loadable by branet evaluate(-images)


def test_a_larger_roi_size_goes_from_prepare_through_training_to_the_pipelines_cut(tmp_path: Path) -> None:
    from branet_pacs.datasets.rois import PrepareReport, write_roi_dataset
    from branet_pacs.evaluation.rois import classify
    from branet_pacs.models.classifier import MalignancyClassifier

    from synthetic import blob_case

    rng = np.random.default_rng(4)
    cases = [blob_case(rng, tmp_path / "src", f"{label[0]}{i}", category=label, group=f"p{i}")
             for label in ("benign", "malignant") for i in range(4)]
    rois = tmp_path / "rois-160"
    write_roi_dataset(cases, rois, PrepareReport("synthetic", str(tmp_path / "src"), 0.15, roi_size=160))
    data = load_roi_set(rois)
    assert data.pixels.shape[1:] == (160, 160)
    assert json.loads((rois / "prepare.json").read_text())["roi_size"] == 160
    settings = dataclasses.replace(SETTINGS, synthetic_ratio=0.0, epochs=1)
    doc = train_model(rois, tmp_path / "models" / "big-us", settings, version="0.0.1")
    assert doc["data"]["roi_size"] == 160
    clf = MalignancyClassifier.load(tmp_path / "models", "US", device="cpu")
    assert clf.roi_size == 160 and clf.entry.input["size"] == 160
    image = rng.uniform(size=(200, 240)).astype(np.float32)
    p = clf.predict_boxes(image, [(40, 50, 120, 140)], clf.roi_margin)       # cut at 160 by the one ROI path
    assert p.shape == (1,) and 0.0 <= p[0] <= 1.0
    assert len(classify(rois, clf)[0]) == 8
    small = tmp_path / "rois-128"
    write_roi_dataset(cases, small, PrepareReport("synthetic", str(tmp_path / "src"), 0.15))
    with pytest.raises(ValueError, match="--roi-size 160"):
        classify(small, clf)
    with pytest.raises(ValueError, match="different sizes"):
        trainer.load_roi_sets([rois, small])
