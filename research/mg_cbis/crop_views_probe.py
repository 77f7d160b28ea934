"""More from LiteMedSAM's lesion crop: other poolings of the same crop's embedding, and other crop scales.

The shipped "litemedsam-crop" block (`models.segmenter.lesion_crop_embedding`) encodes a square of 2.5x the lesion
box and averages the 64x64x256 embedding inside the box-prompted mask and in a ring around it. A mass's malignancy
shows at its margin (spiculated, ill-defined, microlobulated vs circumscribed), and a mean over the whole mask mixes
margin with core. This probe pools the same embedding more ways, on the feature grid:

- core: the mask eroded by `band` cells (band = 15 % of the box's side on the grid, at least 1);
- inner band: the mask less its core; outer band: the mask dilated by `band` cells, less the mask;
- std: the embedding's standard deviation inside the mask (heterogeneity);

and encodes crops of other sizes (1.5x: the margin at ~1.7x the resolution; 4x: more surrounding tissue), each pooled
like the shipped block. `extract` caches, per ROI folder and crop scale, `crop-views-s<scale>.npz` (one encoder pass
per ROI and scale, ~1-2 s on 2 cores); at scale 2.5 it also writes the shipped block's cache
(`features-litemedsam-crop.npz`, the same numbers `lesion_features.folder_crop_features` computes) so that it is not
computed twice. `score` fits the feature head with each extra block on the shipped model's patient-grouped folds,
alone and with the shipped CNN's out-of-fold logit (as crop_embedding_probe.py recovers it), with a patient bootstrap
of the gain, and the cross-site check (fit on all of CBIS-DDSM, score mini-MIAS lesions).

    python research/mg_cbis/crop_views_probe.py extract /work/rois/cbis-ddsm --scales 2.5 1.5 4
    python research/mg_cbis/crop_views_probe.py score /work/rois/cbis-ddsm --mias /work/rois/mias
"""
import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from branet_pacs.datasets.rois import list_roi_files, parse_box
from branet_pacs.imaging.geometry import box_mask
from branet_pacs.models.feature_head import FeatureHead, input_widths, logit
from branet_pacs.models.runtime import Engine, available_cores, configure_torch
from branet_pacs.models.segmenter import LiteMedSAMSegmenter, StagedEncoder, encode_lesion_crop, pooled_embedding
from branet_pacs.train import lesion_features
from crop_embedding_probe import head_oof, line, shipped_cnn_logit, shipped_head_recipe, shipped_oof
from common import breast_level, grouped_bootstrap, nested_weight

SHIPPED_SCALE = 2.5
POOLINGS = ("shipped", "core", "inner", "outer", "std")   # shipped 512, the others 256 each
BAND = 0.15                                               # band width / the box's side, on the feature grid
MASK_SIDE = 128                                           # the crop's mask is kept at this size (shape features)


def cache_path(root: Path, scale: float) -> Path:
    return root / f"crop-views-s{scale:g}.npz"


def grid_weights(region: np.ndarray, grid: int) -> torch.Tensor:
    """A square crop's boolean region as area fractions on the encoder's feature grid (the crop is resized to the
    encoder's 256 px, so there is no padding)."""
    weights = torch.from_numpy(np.ascontiguousarray(region, dtype=np.float32))[None, None]
    return F.interpolate(F.interpolate(weights, size=(256, 256), mode="area"), size=(grid, grid), mode="area")[0, 0]


def weighted_mean(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (features * (weights / weights.sum().clamp(min=1e-6))).sum((1, 2))


def dilate(x: torch.Tensor, cells: int) -> torch.Tensor:
    return F.max_pool2d(x[None, None], 2 * cells + 1, stride=1, padding=cells)[0, 0]


def crop_views(segmenter: LiteMedSAMSegmenter, image: np.ndarray, box, scale: float) -> dict[str, np.ndarray]:
    """The poolings of one lesion crop (the crop, prompt and mask of `encode_lesion_crop` at context `scale`)."""
    x0, y0, x1, y1 = box
    lesion = encode_lesion_crop(segmenter, image, box, context=scale)
    embedding, mask, side = lesion.embedding, lesion.mask, lesion.mask.shape[0]
    features = embedding.features[0].float().cpu()
    grid = features.shape[-1]
    m = grid_weights(mask, grid)
    solid = (m > 0.5).float() if (m > 0.5).any() else (m > 0).float()
    cells = max(1, int(round(BAND * max(x1 - x0, y1 - y0) / side * grid)))
    core = 1.0 - dilate(1.0 - solid, cells)
    if core.sum() == 0:
        core = solid
    outer = dilate(solid, cells) * (1.0 - solid)
    if outer.sum() == 0:
        outer = 1.0 - solid
    mean = weighted_mean(features, m)
    var = weighted_mean((features - mean[:, None, None]) ** 2, m)
    small = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=(MASK_SIDE, MASK_SIDE),
                          mode="area")[0, 0].numpy() > 0.5
    return {"shipped": pooled_embedding(embedding, mask), "mask": small,
            "core": weighted_mean(features, core).numpy(),
            "inner": weighted_mean(features, solid - core if (solid - core).sum() > 0 else solid).numpy(),
            "outer": weighted_mean(features, outer).numpy(),
            "std": var.clamp(min=0).sqrt().numpy()}


def extract(root: Path, scales: list[float]) -> None:
    files = [f for f, _ in list_roi_files(root)]
    segmenter = LiteMedSAMSegmenter("cpu", Engine("onnx", threads=available_cores()))
    sha = lesion_features._litemedsam_sha256()
    for scale in scales:
        path = cache_path(root, scale)
        if path.is_file():
            with np.load(path) as stored:
                if list(stored["files"]) == files:
                    print(f"{path} is there")
                    continue
        views = {name: [None] * len(files) for name in (*POOLINGS, "mask")}
        for image, rows in tqdm(lesion_features._source_images(root, files), desc=f"crops x{scale:g} {root.name}",
                                unit="image", mininterval=30):
            for index, row in rows:
                for name, value in crop_views(segmenter, image, parse_box(row["box"]), scale).items():
                    views[name][index] = value
        arrays = {name: np.stack(values).astype(bool if name == "mask" else np.float32)
                  for name, values in views.items()}
        np.savez(path, files=np.array(files), litemedsam_sha256=np.array(sha), **arrays)
        if scale == SHIPPED_SCALE:
            np.savez(root / lesion_features.CROP_CACHE_FILE, files=np.array(files), features=arrays["shipped"],
                     litemedsam_sha256=np.array(sha))
        print(f"wrote {path}")


def shape_features(mask: np.ndarray) -> np.ndarray:
    """Ten numbers on the outline of a crop's mask, none of them the lesion's size: solidity, circularity, extent,
    eccentricity, convex deficiency, perimeter against the smoothed outline's (roughness), and the radial signature
    (centroid-to-edge distance at 128 angles): its coefficient of variation, its energy above the 4th harmonic
    (spicules, lobules), its number of local maxima, and the deepest notch against the median radius."""
    from scipy.signal import find_peaks
    from skimage import measure, morphology

    labels = measure.label(mask)
    if labels.max() == 0:
        return np.zeros(SHAPE_COUNT, dtype=np.float32)
    region = max(measure.regionprops(labels), key=lambda r: r.area)
    m = labels == region.label
    area, perimeter = float(region.area), max(float(region.perimeter), 1.0)
    smooth = morphology.opening(m, morphology.disk(max(2, int(0.05 * np.sqrt(area)))))
    cy, cx = region.centroid
    (contour, *_) = sorted(measure.find_contours(m.astype(float), 0.5), key=len, reverse=True)
    angles = np.arctan2(contour[:, 0] - cy, contour[:, 1] - cx)
    radii = np.hypot(contour[:, 0] - cy, contour[:, 1] - cx)
    order = np.argsort(angles)
    grid = np.linspace(-np.pi, np.pi, 128, endpoint=False)
    signature = np.interp(grid, angles[order], radii[order], period=2 * np.pi)
    median = max(float(np.median(signature)), 1e-6)
    spectrum = np.abs(np.fft.rfft(signature - signature.mean())) / len(signature)
    high = float(np.sqrt((spectrum[5:] ** 2).sum())) / median
    wrapped = np.concatenate([signature, signature[:16]])
    peaks = sum(1 for p in find_peaks(wrapped, prominence=0.05 * median)[0] if p < len(signature))
    return np.array([region.solidity, 4 * np.pi * area / perimeter ** 2, region.extent, region.eccentricity,
                     1 - area / max(float(region.area_convex), 1.0), perimeter / max(measure.perimeter(smooth), 1.0),
                     signature.std() / median, high, peaks, 1 - signature.min() / median], dtype=np.float32)


SHAPE_COUNT = 10


def load_shapes(root: Path, scale: float) -> np.ndarray | None:
    path = cache_path(root, scale)
    if not path.is_file():
        return None
    with np.load(path) as stored:
        if "mask" not in stored:
            return None
        return np.stack([shape_features(m) for m in stored["mask"]])


STAGES = ("stage1", "stage2", "stage3")   # TinyViT layers 1-3 (128, 160, 320 channels); the product reads 2-3


def stage_encoder(segmenter: LiteMedSAMSegmenter):
    from branet_pacs.models.onnx_engine import compiled_or_module

    return compiled_or_module(StagedEncoder(segmenter.model.image_encoder, (0, 1, 2)), [torch.zeros(1, 3, 256, 256)],
                              engine=Engine("onnx", threads=available_cores()), name="litemedsam-encoder-stages",
                              digest=lesion_features._litemedsam_sha256(), device=torch.device("cpu"), output_count=4)


def stage_views(segmenter: LiteMedSAMSegmenter, encoder, image: np.ndarray, box, scale: float) -> dict:
    """Each encoder stage's map of the lesion crop averaged inside the box-prompted mask and in the shipped ring."""
    from branet_pacs.models.segmenter import LiteMedSAMEmbedding, encoder_input, lesion_crop

    crop, inner_box = lesion_crop(image, box, scale)
    x, resized = encoder_input(crop)
    with torch.inference_mode():
        *maps, neck = encoder(x)
    embedding = LiteMedSAMEmbedding(features=neck, original_size=crop.shape, resized_size=resized)
    (mask,) = segmenter.decode(embedding, [inner_box])
    mask = mask if mask.any() else box_mask(crop.shape, inner_box)
    out = {"neck": pooled_embedding(embedding, mask)}
    for name, fmap in zip(STAGES, maps):
        out[name] = pooled_embedding(LiteMedSAMEmbedding(features=fmap.float(), original_size=crop.shape,
                                                         resized_size=resized), mask)
    return out


def stages_path(root: Path, scale: float) -> Path:
    return root / f"crop-stages-s{scale:g}.npz"


def extract_stages(root: Path, scale: float) -> None:
    files = [f for f, _ in list_roi_files(root)]
    segmenter = LiteMedSAMSegmenter("cpu", Engine("onnx", threads=available_cores()))
    encoder = stage_encoder(segmenter)
    views: dict[str, list] = {}
    for image, rows in tqdm(lesion_features._source_images(root, files), desc=f"stages x{scale:g} {root.name}",
                            unit="image", mininterval=30):
        for index, row in rows:
            for name, value in stage_views(segmenter, encoder, image, parse_box(row["box"]), scale).items():
                views.setdefault(name, [None] * len(files))[index] = value
    np.savez(stages_path(root, scale), files=np.array(files), **{k: np.stack(v) for k, v in views.items()})
    print(f"wrote {stages_path(root, scale)}")


def load_views(root: Path, scale: float) -> dict[str, np.ndarray] | None:
    path = cache_path(root, scale)
    if not path.is_file():
        return None
    with np.load(path) as stored:
        return {name: stored[name] for name in POOLINGS}


def shipped_blocks(root: Path, inputs: list[str]) -> list[np.ndarray]:
    """The shipped head's input blocks for an ROI folder, one array per input (from the folder's caches)."""
    return np.split(lesion_features.head_features(root, inputs), np.cumsum(input_widths(inputs))[:-1], axis=1)


def candidate_blocks(root: Path) -> dict[str, np.ndarray]:
    """Every extra head block this probe can offer for an ROI folder (what its caches hold), by name."""
    blocks: dict[str, np.ndarray] = {}
    for scale in (SHIPPED_SCALE, 1.5, 4.0):
        views = load_views(root, scale)
        if views is None:
            continue
        for name in POOLINGS:
            if not (scale == SHIPPED_SCALE and name == "shipped"):
                blocks[f"x{scale:g} {name}"] = views[name]
        if scale == SHIPPED_SCALE:
            blocks["x2.5 inner+outer"] = np.concatenate([views["inner"], views["outer"]], axis=1)
    shapes = load_shapes(root, 1.5)
    if shapes is not None:
        blocks["x1.5 shape"] = shapes
    if stages_path(root, SHIPPED_SCALE).is_file():
        with np.load(stages_path(root, SHIPPED_SCALE)) as stored:
            for name in STAGES:
                blocks[f"x2.5 {name}"] = stored[name]
            blocks["x2.5 stage2+stage3"] = np.concatenate([stored["stage2"], stored["stage3"]], axis=1)
    if "x1.5 shipped" in blocks and "x4 shipped" in blocks:
        blocks["x1.5+x4 shipped"] = np.concatenate([blocks["x1.5 shipped"], blocks["x4 shipped"]], axis=1)
    return blocks


def score(root: Path, mias: Path | None, c_grid: list[float]) -> None:
    from branet_pacs.datasets.rois import load_roi_set

    rois = load_roi_set(root)
    y, files, groups = rois.labels, list(rois.files), np.array(rois.groups)
    p_product, fold = shipped_oof(files)
    inputs, base_c = shipped_head_recipe()
    base_blocks = shipped_blocks(root, inputs)
    shipped_head = head_oof(base_blocks, base_c, y, fold)
    cnn = shipped_cnn_logit(files, p_product, shipped_head)
    shipped_product = (shipped_head + cnn) / 2      # the plain logit mean (2.2.0's combination; 2.3.0: the head)

    def report(name: str, z: np.ndarray) -> None:
        z2 = (z + cnn) / 2
        breast = roc_auc_score(*breast_level(files, groups, y, z2))
        print(line(name, y, z, fold))
        print(line("  + shipped CNN", y, z2, fold, f"  breast {breast:.3f}"))

    print(f"CBIS-DDSM {len(y)} ROIs, the shipped model's 5 patient-grouped folds")
    print(line("shipped CNN (recovered)", y, cnn, fold))
    report(f"shipped head ({' + '.join(inputs)})", shipped_head)
    candidates = candidate_blocks(root)
    results = {}
    for name, extra in candidates.items():
        for c in c_grid:
            alone = head_oof([extra], [c], y, fold)
            z = head_oof(base_blocks + [extra], base_c + [c], y, fold)
            results[(name, c)] = z
            print(line(f"{name} alone (C {c})", y, alone, fold))
            report(f"shipped head + {name} (C {c})", z)
    ranked = sorted(results, key=lambda k: -roc_auc_score(y, (results[k] + cnn) / 2))
    for key in ranked[:3]:
        z = results[key]
        low, mid, high = grouped_bootstrap(y, groups, (z + cnn) / 2, shipped_product)
        weighted, weights = nested_weight(cnn, z, y, fold)
        print(f"\n{key}: product minus shipped product AUC {mid:+.3f} (patient bootstrap 95 % CI {low:+.3f} to "
              f"{high:+.3f}; picked on these folds, so optimistic)")
        print(line(f"  learned CNN weight (nested; w per fold {weights})", y, weighted, fold))
    if mias is None or not results:
        return
    from branet_pacs.models.classifier import MalignancyClassifier

    m = load_roi_set(mias)
    m_base = shipped_blocks(mias, inputs)
    m_candidates = candidate_blocks(mias)
    classifier = MalignancyClassifier.load("models", "MG", device="cpu")
    m_cnn = logit(classifier.predict(m.pixels.astype(np.float32) / 127.5 - 1.0))
    print(f"\nCBIS-DDSM -> mini-MIAS ({len(m.labels)} lesions), heads fitted on all of CBIS-DDSM")

    def fit_score(train_blocks: list[np.ndarray], test_blocks: list[np.ndarray], cs: list[float]) -> np.ndarray:
        head = FeatureHead.fit(np.concatenate(train_blocks, axis=1), y, cs, [b.shape[1] for b in train_blocks])
        return logit(head.predict(np.concatenate(test_blocks, axis=1)))

    base = fit_score(base_blocks, m_base, base_c)
    print(line("shipped head", m.labels, base))
    print(line("  + shipped CNN", m.labels, (base + m_cnn) / 2))
    for name, c in ranked[:8]:
        if name in m_candidates:
            z = fit_score(base_blocks + [candidates[name]], m_base + [m_candidates[name]], base_c + [c])
            print(line(f"shipped head + {name} (C {c})", m.labels, z))
            print(line("  + shipped CNN", m.labels, (z + m_cnn) / 2))


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("extract")
    ex.add_argument("root", type=Path)
    ex.add_argument("--scales", type=float, nargs="+", default=[SHIPPED_SCALE])
    st = sub.add_parser("extract-stages")
    st.add_argument("root", type=Path)
    st.add_argument("--scale", type=float, default=SHIPPED_SCALE)
    sc = sub.add_parser("score")
    sc.add_argument("root", type=Path)
    sc.add_argument("--mias", type=Path)
    sc.add_argument("--c", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    args = parser.parse_args()
    configure_torch(2)
    if args.command == "extract":
        extract(args.root, args.scales)
    elif args.command == "extract-stages":
        extract_stages(args.root, args.scale)
    else:
        score(args.root, args.mias, args.c)


if __name__ == "__main__":
    main()
