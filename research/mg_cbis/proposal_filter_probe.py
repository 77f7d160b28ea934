"""Can a second stage tell the detector's true masses from its false findings (false-positive reduction)?

On whole CBIS-DDSM films the automatic path's score is dominated by false findings (docs/mammography.md: their
p(malignant) ranks benign vs malignant at 0.54, the true ones' at 0.78). Here every film is run through the detector
member that did not train on it; each candidate down to `--floor` (best `--candidates` per film) gets cheap features
that the product already has or can compute in milliseconds: the detector's own (peak, rank, peak / the film's best,
heat inside the box), geometry (size and position in the breast, laterality normalised) and the 53 lesion descriptors.
A logistic regression (`FeatureHead.fit`, grouped folds by patient) re-scores them out of fold; reported is the
FROC-style curve (hit rate at IoU 0.3 / 0.5 of the top 3 vs false findings per film) for the detector's score and the
re-score, on CBIS-DDSM out of fold and on mini-MIAS films (re-scorer fitted on all of CBIS-DDSM, detector shipped:
neither saw mini-MIAS). Also reported: how many masses the detector sees at all (its heat inside the mass reaches
0.2), by mass size (fraction of the film), view and pathology. `--models-dir` takes another detector (its folder's
manifest.json) to compare detectors on the same films.

    python research/mg_cbis/proposal_filter_probe.py --data cbis-ddsm ../shared/data/cbis-ddsm \
        --data mias ../shared/data/mias --out var/exp/proposal-filter
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from branet_pacs.datasets.folds import make_folds
from branet_pacs.evaluation.images import breast_image, case_key, out_of_fold_detectors, read_cases
from branet_pacs.imaging import lesion_descriptors
from branet_pacs.imaging.breast import chest_wall_on_left
from branet_pacs.imaging.geometry import box_iou, mask_box
from branet_pacs.models.detector import heatmap_candidates, model_heatmap_to_image
from branet_pacs.models.feature_head import FeatureHead
from branet_pacs.models.manifest import find_model

GEOMETRY = ("peak", "logit_peak", "rank", "peak_over_best", "candidates_over_half", "heat_mean_in_box",
            "heat_area_fraction", "width_over_breast", "height_over_breast", "area_over_breast", "aspect",
            "distance_from_chest_wall", "height_in_breast", "inside_breast")
FALSE_PER_FILM = (0.25, 0.5, 0.75, 1.0, 1.5)
SEEN = 0.2                                        # heat inside a mass that counts as the detector seeing it
SIZES = ((0.002, "tiny"), (0.01, "small"), (0.04, "mid"), (1.0, "large"))   # mass box area / film area


def film_candidates(detector, image, floor: float, count: int) -> tuple[list[dict], np.ndarray]:
    """The detector's candidates (best first) with the detector and geometry features, in image coordinates; and
    its heatmap at image resolution."""
    inputs, geometry, heat = detector._prepare(image.pixels, image.breast_mask)
    valid = inputs[1] > 0.5
    spec = detector.spec
    found = heatmap_candidates(heat, valid, max_proposals=count, min_score=floor, region_level=spec.region_level,
                               min_area=spec.min_area, nms_iou=spec.nms_iou, expand=spec.expand)
    heat_image = model_heatmap_to_image(heat, geometry, image.pixels.shape)
    if not found:
        return [], heat_image
    mask = image.breast_mask if image.breast_mask is not None else np.ones(image.pixels.shape, bool)
    bx0, by0, bx1, by1 = mask_box(mask) or (0, 0, mask.shape[1], mask.shape[0])
    bw, bh = max(bx1 - bx0, 1), max(by1 - by0, 1)
    left = chest_wall_on_left(mask)
    best = found[0][1]
    over_half = sum(score >= 0.5 for _, score in found)
    rows = []
    for rank, (model_box, peak) in enumerate(found):
        mx0, my0, mx1, my1 = (int(np.floor(model_box[0])), int(np.floor(model_box[1])),
                              int(np.ceil(model_box[2])), int(np.ceil(model_box[3])))
        patch = heat[max(my0, 0):my1, max(mx0, 0):mx1]
        box = geometry.to_image(model_box, image.pixels.shape)
        x0, y0, x1, y1 = box
        cx = (x0 + x1) / 2
        from_wall = (cx - bx0) / bw if left else (bx1 - cx) / bw
        inside = float(mask[y0:y1, x0:x1].mean()) if (x1 > x0 and y1 > y0) else 0.0
        rows.append({"box": box, "peak": float(peak), "features": [
            peak, float(np.log(peak / max(1 - peak, 1e-4))), rank, peak / best, over_half,
            float(patch.mean()) if patch.size else 0.0,
            float((patch >= spec.region_level * peak).mean()) if patch.size else 0.0,
            (x1 - x0) / bw, (y1 - y0) / bh, (x1 - x0) * (y1 - y0) / (bw * bh), (x1 - x0) / max(y1 - y0, 1),
            from_wall, ((y0 + y1) / 2 - by0) / bh, inside]})
    scaled = lesion_descriptors.tissue_scale(image.pixels)
    for row in rows:
        row["features"] = np.concatenate([row["features"],
                                          lesion_descriptors.lesion_descriptors(image.pixels, row["box"], scaled)])
    return rows, heat_image


def extract(cases, detectors, shipped, floor: float, count: int) -> list[dict]:
    films = []
    for case in tqdm(cases, desc="films", mininterval=20):
        image = breast_image(case, "MG")
        truth = [mask_box(lesion.mask) for lesion in case.lesions]
        candidates, heat = film_candidates(detectors.get(case_key(case), shipped), image, floor, count)
        for c in candidates:
            c["iou"] = max((box_iou(c["box"], t) for t in truth), default=0.0)
        area = float(image.pixels.size)
        films.append({"name": case.name, "group": case.group, "category": case.category, "site": case.site,
                      "view": case.tags.get("view", ""), "truths": len(truth), "candidates": candidates,
                      "lesions": [{"heat": float(heat[lesion.mask].max()) if lesion.mask.any() else 0.0,
                                   "size": float((t[2] - t[0]) * (t[3] - t[1]) / area)}
                                  for lesion, t in zip(case.lesions, truth)]})
    return films


def froc(films: list[dict], score_key: str, thresholds, top: int = 3) -> list[dict]:
    """Per threshold: hit rate at IoU 0.3 / 0.5 (any of the top `top` by `score_key` at or above it) and false
    findings (IoU < 0.3) per film."""
    out = []
    for t in thresholds:
        hit30 = hit50 = false = 0
        for film in films:
            kept = sorted((c for c in film["candidates"] if c[score_key] >= t), key=lambda c: -c[score_key])[:top]
            best = max((c["iou"] for c in kept), default=0.0)
            hit30 += best >= 0.3
            hit50 += best >= 0.5
            false += sum(c["iou"] < 0.3 for c in kept)
        n = len(films)
        out.append({"threshold": round(float(t), 4), "hit_iou30": hit30 / n, "hit_iou50": hit50 / n,
                    "false_per_film": false / n})
    return out


def at_false_rate(curve: list[dict], rate: float) -> dict:
    """The curve's point with the most hits at no more than `rate` false findings per film."""
    ok = [p for p in curve if p["false_per_film"] <= rate] or [min(curve, key=lambda p: p["false_per_film"])]
    return max(ok, key=lambda p: (p["hit_iou30"], p["hit_iou50"]))


def table(films: list[dict], keys=("peak", "filtered")) -> dict:
    grid = np.round(np.arange(0.0, 1.0001, 0.01), 2)
    curves = {key: froc(films, key, grid) for key in keys}
    return {"films": len(films), "curves": curves,
            "at_false_per_film": {str(r): {key: at_false_rate(curves[key], r) for key in keys} for r in FALSE_PER_FILM},
            "at_detector_threshold_0.5": {"peak": froc(films, "peak", [0.5])[0]}}


def seen_rates(films: list[dict]) -> dict:
    """Share of masses whose heat reaches SEEN, by size class, view and pathology of the film."""
    groups: dict[str, list[bool]] = {}
    for film in films:
        for lesion in film["lesions"]:
            size = next(name for limit, name in SIZES if lesion["size"] < limit)
            for key in ("all", f"size {size}", f"view {film['view']}", f"film {film['category']}"):
                groups.setdefault(key, []).append(lesion["heat"] >= SEEN)
    return {key: {"masses": len(v), "seen": round(float(np.mean(v)), 3)} for key, v in sorted(groups.items())}


def matrix(films: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Every candidate's features, and whether it is a true mass (IoU >= 0.3)."""
    candidates = [c for f in films for c in f["candidates"]]
    return np.array([c["features"] for c in candidates]), np.array([c["iou"] >= 0.3 for c in candidates])


def rescore(head: FeatureHead, films: list[dict], cols: slice) -> None:
    """Each candidate's "filtered" score: p(true mass) from the re-scorer on its feature columns `cols`."""
    for film in films:
        if film["candidates"]:
            p = head.predict(np.array([c["features"] for c in film["candidates"]])[:, cols])
            for c, q in zip(film["candidates"], p):
                c["filtered"] = float(q)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", nargs=2, action="append", metavar=("DATASET", "SRC"), required=True)
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--floor", type=float, default=0.2)
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--C", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    detector = find_model(args.models_dir.resolve(), "detector", "MG")
    tag = f"{detector.name}-{detector.version}-{detector.sha256[:8]}"
    cache = args.out / f"candidates-{tag}-floor{args.floor}-top{args.candidates}.json"
    args.out.mkdir(parents=True, exist_ok=True)
    if cache.is_file():
        films = json.loads(cache.read_text())
    else:
        cases = read_cases([(name, Path(src)) for name, src in args.data])
        shipped, detectors = out_of_fold_detectors(args.models_dir.resolve(), "MG", cases, torch.device("cpu"))
        films = extract([c for d in cases.values() for c in d], detectors, shipped, args.floor, args.candidates)
        for film in films:
            for c in film["candidates"]:
                c["features"] = [float(v) for v in c["features"]]
                c["box"] = [int(v) for v in c["box"]]
        cache.write_text(json.dumps(films))
    widths = (len(GEOMETRY), lesion_descriptors.COUNT)
    dev = [f for f in films if f["site"] == "cbis-ddsm"]
    other = [f for f in films if f["site"] != "cbis-ddsm"]
    # CBIS-DDSM: out of fold over patient-grouped folds (films without candidates still count in the rates)
    splits = make_folds([f["category"] for f in dev], [f["group"] for f in dev], 5, 0)
    fold_of = np.zeros(len(dev), dtype=int)
    for k, (_, val) in enumerate(splits):
        fold_of[val] = k
    report = {"detector": tag, "floor": args.floor, "candidates": args.candidates, "C": args.C,
              "features": list(GEOMETRY) + [f"descriptor{i}" for i in range(lesion_descriptors.COUNT)],
              "seen": {site: seen_rates([f for f in films if f["site"] == site])
                       for site in sorted({f["site"] for f in films})}}
    print(json.dumps(report["seen"], indent=1))
    for name, blocks in {"detector+geometry": (widths[0],), "all": widths}.items():
        cols = slice(0, sum(blocks))
        for k in range(5):
            train = [f for f, fold in zip(dev, fold_of) if fold != k]
            x, y = matrix(train)
            head = FeatureHead.fit(x[:, cols], y, args.C, blocks if len(blocks) > 1 else ())
            rescore(head, [f for f, fold in zip(dev, fold_of) if fold == k], cols)
        report[f"cbis-ddsm out of fold ({name})"] = table(dev)
        if other:
            x, y = matrix(dev)
            rescore(FeatureHead.fit(x[:, cols], y, args.C, blocks if len(blocks) > 1 else ()), other, cols)
            for site in sorted({f["site"] for f in other}):
                mine = [f for f in other if f["site"] == site and f["truths"]]
                report[f"{site} never seen ({name})"] = table(mine)
    for key, value in report.items():
        if isinstance(value, dict) and "at_false_per_film" in value:
            print(key, value["films"], "films")
            for rate, points in value["at_false_per_film"].items():
                print(f"  <= {rate} false/film: " + "  ".join(
                    f"{k} hit30 {p['hit_iou30']:.3f} hit50 {p['hit_iou50']:.3f} (t {p['threshold']}, "
                    f"{p['false_per_film']:.2f})" for k, p in points.items()))
    for value in report.values():
        if isinstance(value, dict):
            value.pop("curves", None)
    (args.out / f"report-{tag}-floor{args.floor}-C{args.C}.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
