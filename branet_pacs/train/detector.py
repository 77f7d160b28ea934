"""`branet train-detector`: train, cross-validate and ship the lesion detector (a heatmap U-Net).

Data: a dataset reader's cases (`--data busi SRC`: benign, malignant AND normal images, the union of an image's masks
is the target, normal images teach the background; `--data mias SRC`: disk masks from centre + radius, normal films
are negatives, films with an abnormality but no centre are left out), letterboxed once (`detector_data`).
Cross-validation uses the one fold splitter, stratified by category and grouped (patients, identical images).
Each fold checkpoints every epoch (`--resume` continues), keeps its last epoch (no selection on the held-out fold),
and predicts its held-out images; the proposal metrics are computed on those out-of-fold heatmaps. The shipped
detector is the ensemble of the fold models (mean heatmap), so nothing in it was fitted on all data at once and
the cross-validated figures describe its members.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from branet_pacs.datasets.folds import make_folds
from branet_pacs.datasets.readers import READERS, read_dataset
from branet_pacs.evaluation.metrics import dice, json_safe
from branet_pacs.evaluation.proposals import OOF_PROPOSALS, ImageProposals, proposal_metrics, write_oof_proposals
from branet_pacs.train.augment import augment_letterboxed
from branet_pacs.train.detector_data import CachedSet, build_cache, concat_caches, sample_crops, training_cases

log = logging.getLogger(__name__)

DEFAULTS = {
    "US": {"size": 112, "epochs": 36, "crop": 0, "folds": 3, "repeats": 1},
    "MG": {"size": 512, "epochs": 32, "crop": 128, "folds": 3, "repeats": 2},
}
SCORE_SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
CACHE_VERSION = 3    # 2: groups from the dataset readers (identical BUSI images share one); 3: MLO views lose
#                       the pectoral muscle from the valid region


@dataclass(frozen=True)
class DetectorTrainSettings:
    modality: str = "US"
    size: int = 128
    epochs: int = 30
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    crop: int = 0                  # train on random crop x crop windows of the letterboxed input (0 = whole input)
    lesion_crop_p: float = 0.6     # chance that a crop of a lesion image is centred near a lesion
    repeats: int = 1               # times each training image is drawn per epoch (with crops: different windows)
    seed: int = 0
    channels: tuple[int, ...] = (16, 32, 64, 128)
    val_every: int = 5             # held-out loss/Dice every this many epochs (and after the last)


def detection_loss(logits, target):
    """BCE + soft Dice over the whole batch (a batch-level Dice stays defined when most images are empty)."""
    import torch
    import torch.nn.functional as F

    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    dice = 1.0 - (2.0 * (prob * target).sum() + 1.0) / (prob.sum() + target.sum() + 1.0)
    return bce + dice


def _lr_at(step: int, total: int, base: float) -> float:
    warm = max(1, total // 20)
    if step < warm:
        return base * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 1e-2 * base + (base - 1e-2 * base) * 0.5 * (1.0 + math.cos(math.pi * progress))


def evaluate_loss(net, inputs: np.ndarray, targets: np.ndarray, batch_size: int = 32) -> dict[str, float]:
    import torch

    net.eval()
    losses, probs, truths = [], [], []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            x = torch.from_numpy(inputs[start:start + batch_size].astype(np.float32))
            y = torch.from_numpy(targets[start:start + batch_size].astype(np.float32))[:, None]
            logits = net(x)
            losses.append(float(detection_loss(logits, y)) * len(x))
            probs.append(torch.sigmoid(logits))
            truths.append(y)
    return {"loss": sum(losses) / max(1, len(inputs)),
            "dice": dice(torch.cat(probs).numpy() >= 0.5, torch.cat(truths).numpy() >= 0.5) if probs else float("nan")}


def train_fold(cache: CachedSet, train_idx: np.ndarray, val_idx: np.ndarray, settings: DetectorTrainSettings,
               checkpoint: Path, fold: int, resume: bool = True, progress: bool = True):
    """Train one fold model, checkpointing after every epoch; returns (net, history)."""
    import torch
    from tqdm import tqdm

    from branet_pacs.models.detector import TinyUNet

    torch.manual_seed(settings.seed * 1000 + fold)
    net = TinyUNet(settings.channels).to(memory_format=torch.channels_last)  # ~20 % faster convs on CPU
    optimizer = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    history: list[dict[str, float]] = []
    start_epoch = 0
    if resume and checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        history = list(state["history"])
        log.info("fold %d: resumed after epoch %d", fold, start_epoch)
    drawn = len(train_idx) * max(1, settings.repeats)
    steps = max(1, math.ceil(drawn / settings.batch_size))
    total = steps * settings.epochs
    x_all = cache.inputs[train_idx]
    y_all = cache.targets[train_idx]
    for epoch in range(start_epoch, settings.epochs):
        net.train()
        began = time.perf_counter()
        generator = torch.Generator().manual_seed(settings.seed * 100_003 + fold * 1009 + epoch)
        rng = np.random.default_rng(settings.seed * 100_003 + fold * 1009 + epoch)
        order = torch.randperm(drawn, generator=generator).numpy() % len(train_idx)
        running = 0.0
        batches = range(steps)
        if progress:
            batches = tqdm(batches, desc=f"fold {fold} epoch {epoch + 1}/{settings.epochs}", leave=False,
                           mininterval=10)
        for step in batches:
            pick = order[step * settings.batch_size:(step + 1) * settings.batch_size]
            if len(pick) < 2:   # BatchNorm needs two samples
                continue
            if settings.crop:
                xs, ys = sample_crops(x_all[pick].astype(np.float32), y_all[pick].astype(np.float32),
                                      settings.crop, rng, settings.lesion_crop_p)
            else:
                xs, ys = x_all[pick].astype(np.float32), y_all[pick].astype(np.float32)[:, None]
            x, y = augment_letterboxed(torch.from_numpy(xs), torch.from_numpy(ys), generator)
            x = x.contiguous(memory_format=torch.channels_last)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(epoch * steps + step, total, settings.lr)
            loss = detection_loss(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item() * len(pick)
        record = {"epoch": epoch + 1, "train_loss": running / drawn,
                  "seconds": time.perf_counter() - began}
        if len(val_idx) and ((epoch + 1) % max(1, settings.val_every) == 0 or epoch + 1 == settings.epochs):
            val = evaluate_loss(net, cache.inputs[val_idx], cache.targets[val_idx])
            record.update({"val_loss": val["loss"], "val_dice": val["dice"]})
        history.append(record)
        log.info("fold %d epoch %d/%d: %s", fold, epoch + 1, settings.epochs,
                 ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "epoch"))
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = checkpoint.with_suffix(".tmp")
        torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                    "history": history}, tmp)
        tmp.replace(checkpoint)
    net.eval()
    return net, history


def load_fold_net(checkpoint: Path, settings: DetectorTrainSettings):
    import torch

    from branet_pacs.models.detector import TinyUNet

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    net = TinyUNet(settings.channels)
    net.load_state_dict(state["model"])
    return net.eval(), int(state["epoch"]), list(state["history"])


def predict_heatmaps(nets, inputs: np.ndarray, flip_tta: bool = True, batch_size: int = 16) -> np.ndarray:
    """Mean probability heatmaps (n, s, s) of `nets` on letterboxed inputs (the detector's inference rule)."""
    import torch

    from branet_pacs.models.detector import HeatmapEnsemble

    model = HeatmapEnsemble(list(nets)).eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            x = torch.from_numpy(inputs[start:start + batch_size].astype(np.float32))
            prob = model(x)
            if flip_tta:
                prob = 0.5 * (prob + model(x.flip(-1)).flip(-1))
            out.append(prob[:, 0].numpy())
    return np.concatenate(out) if out else np.zeros((0,) + inputs.shape[-2:], dtype=np.float32)


# --- out-of-fold proposals --------------------------------------------------------------------------------------


def image_proposals(cache: CachedSet, heatmaps: dict[int, np.ndarray], spec) -> list[ImageProposals]:
    """Each image's top-3 candidates at any score (the sweep filters them), in cache order."""
    from branet_pacs.models.detector import proposals_from_model_heatmap

    images = []
    for index, heat in sorted(heatmaps.items()):
        valid = cache.inputs[index, 1].astype(np.float32) > 0.5
        proposals = proposals_from_model_heatmap(heat, valid, cache.geometry(index), tuple(cache.shapes[index]),
                                                 spec, max_proposals=3, min_score=0.0)
        images.append(ImageProposals(str(cache.names[index]), str(cache.categories[index]),
                                     tuple(cache.gt_boxes(index)), tuple((p.box, p.score) for p in proposals)))
    return images


def heatmap_dice(cache: CachedSet, heatmaps: dict[int, np.ndarray]) -> dict:
    """Mean per-image Dice of the thresholded (0.5) heatmap vs the letterboxed lesion mask, lesion images only."""
    values = [dice(heat >= 0.5, cache.targets[index].astype(np.float32) >= 0.5)
              for index, heat in heatmaps.items() if (cache.targets[index].astype(np.float32) >= 0.5).any()]
    return {"mean": float(np.mean(values)) if values else float("nan"), "n": len(values)}


def tune_extraction(cache: CachedSet, heatmaps: dict[int, np.ndarray], spec):
    """Pick region_level and expand maximising the top-1 hit rate (IoU >= 0.5) on out-of-fold heatmaps."""
    best = None
    for level in (0.3, 0.4, 0.5, 0.6):
        for expand in (0.0, 0.05, 0.1):
            candidate = replace(spec, region_level=level, expand=expand)
            metrics = proposal_metrics(image_proposals(cache, heatmaps, candidate), min_score=0.0,
                                       max_proposals=1)["lesion"]
            key = (metrics["top1_hit_rate_iou50"], metrics["mean_best_iou"])
            log.info("extraction region_level %.2f expand %.2f: top-1 hit %.3f, mean IoU %.3f",
                     level, expand, *key)
            if best is None or key > best[0]:
                best = (key, candidate)
    return best[1]


# --- the command ---------------------------------------------------------------------------------------------------


def _settings_record(settings: DetectorTrainSettings, args: argparse.Namespace, kinds: list[str]) -> dict:
    record = {"settings": asdict(settings), "data": "+".join(kinds), "folds": args.folds}
    if getattr(args, "validate_by", "group") == "site":
        record["validate_by"] = "site"
    return record


def _datasets(args: argparse.Namespace) -> list[tuple[str, Path]]:
    datasets = [(kind.lower(), Path(src)) for kind, src in args.data]
    for kind, _ in datasets:
        if kind not in READERS:
            raise SystemExit(f"--data: unknown dataset '{kind}' ({' or '.join(sorted(READERS))})")
    if len({kind for kind, _ in datasets}) != len(datasets):
        raise SystemExit("--data: each dataset once")
    return datasets


def train_detector(args: argparse.Namespace) -> int:
    import os

    from branet_pacs.models.runtime import configure_torch

    datasets = _datasets(args)
    modality = args.modality.upper()
    defaults = DEFAULTS[modality]
    folds = args.folds or defaults["folds"]
    args.folds = folds
    settings = DetectorTrainSettings(modality=modality, size=args.size or defaults["size"],
                             epochs=args.epochs or defaults["epochs"], batch_size=args.batch_size, lr=args.lr,
                             crop=defaults["crop"] if args.crop is None else args.crop, seed=args.seed,
                             repeats=args.repeats or defaults["repeats"])
    if settings.size % 16 or (settings.crop and settings.crop % 16):
        raise SystemExit("--size and --crop must be multiples of 16")
    configure_torch(args.threads)
    out = Path(args.out)
    work = Path(args.work) if args.work else Path("var") / "detector-work" / out.name
    work.mkdir(parents=True, exist_ok=True)
    lock = _lock_work(work)
    try:
        if args.validate_by == "site":
            return _leave_one_site_out(args, settings, datasets, out, work)
        return _train_locked(args, settings, datasets, out, work)
    finally:
        os.close(lock)


def _check_record(args: argparse.Namespace, settings: DetectorTrainSettings, kinds: list[str], work: Path) -> None:
    """Refuse to resume a work folder made with other settings or data; clear a stale one when not resuming."""
    record = _settings_record(settings, args, kinds)
    record_path = work / "settings.json"
    if args.resume and record_path.exists():
        previous = json.loads(record_path.read_text())
        if previous != json.loads(json.dumps(record)):
            raise SystemExit(f"--resume: settings differ from the run in {work} ({previous} vs {record})")
    elif not args.resume:
        for stale in [*work.glob("fold*.pt"), *work.glob("oof-fold*.npz"), *work.glob("without-*.pt")]:
            stale.unlink()
    record_path.write_text(json.dumps(record, indent=2))


def _load_caches(datasets: list[tuple[str, Path]], settings: DetectorTrainSettings,
                 work: Path) -> tuple[CachedSet, list[str]]:
    """Every dataset letterboxed once (cached per dataset in the work folder), concatenated; and the images left
    out (e.g. a mini-MIAS abnormality without a centre)."""
    caches, excluded = {}, []
    for kind, src in datasets:
        cache_path = work / f"cache-{kind}-{settings.size}-v{CACHE_VERSION}.npz"
        cases = read_dataset(kind, src)
        excluded += sorted(c.name for c in cases if not c.complete and c.path.is_file())
        if cache_path.exists():
            caches[kind] = CachedSet.load(cache_path)
        else:
            caches[kind] = build_cache(training_cases(cases), settings.size, settings.modality)
            caches[kind].save(cache_path)
        log.info("%s: %d images (%s), %d lesion boxes; cache %s", kind, len(caches[kind]),
                 ", ".join(f"{c}: {int((caches[kind].categories == c).sum())}"
                           for c in np.unique(caches[kind].categories)), len(caches[kind].boxes), cache_path)
    return concat_caches(caches), excluded


def _train_locked(args: argparse.Namespace, settings: DetectorTrainSettings, datasets: list[tuple[str, Path]],
                  out: Path, work: Path) -> int:
    import torch

    from branet_pacs.evaluation.plots import plot_detector_history
    from branet_pacs.models.detector import DetectorSpec, save_weights
    from branet_pacs.train.cards import SEGMENTATION_REPORT, write_detector_card

    modality, folds = settings.modality, args.folds
    kinds = [kind for kind, _ in datasets]
    kind = "+".join(kinds)
    _check_record(args, settings, kinds, work)
    cache, excluded = _load_caches(datasets, settings, work)

    splits = make_folds(cache.categories, cache.groups, folds, args.seed)
    spec = DetectorSpec(size=settings.size, channels=settings.channels)
    nets, histories, oof = [], [], {}
    for fold, (train_idx, val_idx) in enumerate(splits):
        checkpoint = work / f"fold{fold}.pt"
        oof_path = work / f"oof-fold{fold}.npz"
        done = checkpoint.is_file() and torch.load(checkpoint, map_location="cpu",
                                                   weights_only=True)["epoch"] >= settings.epochs
        if done and oof_path.is_file():
            net, _, history = load_fold_net(checkpoint, settings)
        else:
            net, history = train_fold(cache, train_idx, val_idx, settings, checkpoint, fold,
                                      resume=args.resume or checkpoint.is_file(), progress=not args.quiet)
            heat = predict_heatmaps([net], cache.inputs[val_idx])
            np.savez(oof_path, index=val_idx, heat=heat.astype(np.float16))
        with np.load(oof_path) as data:
            for index, heat in zip(data["index"], data["heat"]):
                oof[int(index)] = heat.astype(np.float32)
        nets.append(net)
        histories.append(history)
    # summed epoch times, so a resumed run still reports the whole training cost (validation passes excluded)
    train_seconds = sum(h["seconds"] for history in histories for h in history)

    spec = tune_extraction(cache, oof, spec)
    threshold = float(args.min_score)
    oof_images = image_proposals(cache, oof, spec)
    sweep = [proposal_metrics(oof_images, min_score=s) for s in sorted(set(SCORE_SWEEP) | {threshold})]
    top1 = proposal_metrics(oof_images, min_score=0.0, max_proposals=1)
    metrics = {
        "dataset": kind, "modality": modality, "images": len(cache),
        "categories": {c: int((cache.categories == c).sum()) for c in np.unique(cache.categories)},
        "lesion_boxes": int(len(cache.boxes)), "excluded_films_without_centre": excluded,
        "cross_validation": {"folds": folds, "grouped": True, "grouped_by_patient": "busi" not in kinds, "seed": args.seed,
                             "fold_sizes": [int(len(v)) for _, v in splits], "model": "last epoch of each fold"},
        "settings": asdict(settings), "extraction": asdict(spec), "recommended_min_score": threshold,
        "recommended_min_score_reason": args.min_score_reason or None,
        "out_of_fold": {"heatmap_dice_at_0.5": heatmap_dice(cache, oof),
                        "top1_any_score": top1, "by_min_score": sweep},
        "out_of_fold_by_site": _by_site(cache, oof_images, threshold) if len(kinds) > 1 else None,
        "training_seconds": round(train_seconds, 1),
        "history": histories,
    }
    write_oof_proposals(work / OOF_PROPOSALS, oof_images)
    out.mkdir(parents=True, exist_ok=True)
    weights = save_weights(out / "weights.safetensors", nets, spec)
    (out / "metrics.json").write_text(json.dumps(json_safe(metrics, digits=6), indent=2) + "\n")
    plot_detector_history(histories, out / "training_curves.png")
    version = args.version
    segmentation = out / SEGMENTATION_REPORT
    write_detector_card(out / "MODEL_CARD.md", out.name, version, modality, kind, metrics,
                        json.loads(segmentation.read_text()) if segmentation.is_file() else None)
    _register(out, weights, version, modality, spec, threshold, len(nets))
    log.info("wrote %s (%d fold models), metrics.json, MODEL_CARD.md; registered in %s/manifest.json",
             weights, len(nets), out.parent)
    lesion = next(m for m in sweep if m["min_score"] == threshold)["lesion"]
    print(f"{out.name}: out-of-fold hit rate @IoU0.5 {lesion['hit_rate_iou50']:.3f} (top-3, min_score {threshold}), "
          f"top-1 {top1['lesion']['top1_hit_rate_iou50']:.3f}; training {train_seconds / 60:.1f} min")
    return 0


def _by_site(cache: CachedSet, images: list[ImageProposals], min_score: float) -> dict:
    """Out-of-fold proposal metrics of each site's images at `min_score` (top-3) and top-1 at any score."""
    site_of = dict(zip((str(n) for n in cache.names), (str(s) for s in cache.sites)))
    report = {}
    for site in dict.fromkeys(str(s) for s in cache.sites):
        mine = [image for image in images if site_of[image.name] == site]
        report[site] = {"images": len(mine), "at_min_score": proposal_metrics(mine, min_score=min_score),
                        "top1_any_score": proposal_metrics(mine, min_score=0.0, max_proposals=1)}
    return report


def _leave_one_site_out(args: argparse.Namespace, settings: DetectorTrainSettings, datasets: list[tuple[str, Path]],
                        out: Path, work: Path) -> int:
    """For every site: one detector trained on the other sites (the recipe has no selection on held-out data: fixed
    epochs, last epoch, min_score fixed in advance, the default extraction), then the site left out scored once.
    Each model is registered as `without-<site>` in OUT/manifest.json (evaluate-images --detector OUT/without-X)."""
    from branet_pacs.models.detector import DetectorSpec, save_weights

    kinds = [kind for kind, _ in datasets]
    if len(kinds) < 2:
        raise SystemExit("--validate-by site needs at least two --data sites")
    _check_record(args, settings, kinds, work)
    cache, _ = _load_caches(datasets, settings, work)
    spec = DetectorSpec(size=settings.size, channels=settings.channels)
    threshold = float(args.min_score)
    report = {"sites": kinds, "settings": asdict(settings), "extraction": asdict(spec), "min_score": threshold,
              "held_out": {}}
    for site in kinds:
        held = np.flatnonzero(cache.sites == site)
        kept = np.flatnonzero(cache.sites != site)
        log.info("leave-one-site-out: detector without %s (%d images), scoring %s (%d images)", site, len(kept),
                 site, len(held))
        net, history = train_fold(cache, kept, np.zeros(0, dtype=int), settings, work / f"without-{site}.pt", 0,
                                  resume=True, progress=not args.quiet)
        heat = predict_heatmaps([net], cache.inputs[held])
        images = image_proposals(cache, dict(zip(held.tolist(), heat)), spec)
        report["held_out"][site] = {
            "trained_on": [k for k in kinds if k != site], "n_train": int(len(kept)), "images": int(len(held)),
            "training_seconds": round(sum(h["seconds"] for h in history), 1),
            "top1_any_score": proposal_metrics(images, min_score=0.0, max_proposals=1),
            "by_min_score": [proposal_metrics(images, min_score=s) for s in sorted(set(SCORE_SWEEP) | {threshold})]}
        folder = out / f"without-{site}"
        weights = save_weights(folder / "weights.safetensors", [net], spec)
        _register(folder, weights, f"without-{site}", settings.modality, spec, threshold, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "leave-one-site-out.json").write_text(json.dumps(json_safe(report, digits=6), indent=2) + "\n")
    print(f"{'held-out site':14} {'images':>6} {'top-1 hit@0.5':>14} {'hit@0.5 (min_score)':>20}  trained on")
    for site, r in report["held_out"].items():
        chosen = next(m for m in r["by_min_score"] if m["min_score"] == threshold)["lesion"]
        print(f"{site:14} {r['images']:6d} {r['top1_any_score']['lesion']['top1_hit_rate_iou50']:14.3f} "
              f"{chosen['hit_rate_iou50']:20.3f}  {'+'.join(r['trained_on'])}")
    print(f"wrote {out / 'leave-one-site-out.json'}")
    return 0


def _lock_work(work: Path):
    """An exclusive lock on the work folder: two runs must not write the same checkpoints."""
    import fcntl
    import os

    fd = os.open(work, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SystemExit(f"another train-detector run is using {work}") from None
    return fd


def _register(out: Path, weights: Path, version: str, modality: str, spec, threshold: float, members: int) -> None:
    from branet_pacs.models.manifest import ModelEntry, file_sha256, register_model

    models_dir = out.parent
    entry = ModelEntry(
        name=out.name, kind="detector", modality=modality, version=version,
        file=str(weights.resolve().relative_to(models_dir.resolve())), sha256=file_sha256(weights),
        threshold=threshold,
        input={"size": spec.size, "channels": ["image", "valid_mask"], "letterbox": True,
               "intensity": "1st-99th percentile of valid pixels -> [0, 1], 0 outside the valid mask"},
        extra={"architecture": f"TinyUNet stride-2 stem, widths {list(spec.channels)}", "members": members,
               "output": "lesion probability heatmap", "region_level": spec.region_level, "expand": spec.expand,
               "flip_tta": spec.flip_tta, "threshold_meaning": "recommended min_score for propose()"})
    register_model(models_dir, entry)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-detector", help="train + cross-validate the lesion detector (heatmap U-Net) and register it")
    parser.add_argument("--data", nargs=2, metavar=("DATASET", "SRC"), required=True, action="append",
                        help="busi SRC (BUSI folders), bus-uclm SRC or mias SRC (mini-MIAS films + Info.txt); "
                             "repeat it for several sites (folds grouped within each site)")
    parser.add_argument("--validate-by", choices=("group", "site"), default="group",
                        help="group (default): grouped k-fold CV and the shipped fold ensemble; site: one detector per "
                             "site left out, trained on the others, scored on it (OUT/leave-one-site-out.json)")
    parser.add_argument("--modality", choices=("us", "mg", "US", "MG"), required=True)
    parser.add_argument("--out", required=True, help="models/NAME (weights, metrics, card; manifest in its parent)")
    parser.add_argument("--folds", type=int, default=0, help="cross-validation folds (default 3)")
    parser.add_argument("--epochs", type=int, default=0, help="epochs per fold (default US 36, MG 32)")
    parser.add_argument("--size", type=int, default=0, help="letterboxed input side (default US 112, MG 256)")
    parser.add_argument("--crop", type=int, default=None, help="training crop side (default US 0 = whole, MG 128)")
    parser.add_argument("--repeats", type=int, default=0,
                        help="draws of each training image per epoch (default US 1, MG 2: two crops per film)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0 = all cores)")
    parser.add_argument("--min-score", type=float, default=0.5,
                        help="recommended propose() min_score written to the manifest (default fixed in advance, not "
                             "tuned; the card lists the hit rates for other values)")
    parser.add_argument("--min-score-reason", default="",
                        help="how a --min-score other than the default was chosen, for the model card")
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--work", default="", help="checkpoints and cache (default var/detector-work/NAME)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in the work folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=train_detector)
