"""Lesion proposals against the truth: hit rates and false findings (`proposal_metrics`), and `branet
evaluate-proposals` (LiteMedSAM Dice from the detector's out-of-fold top proposal vs from the true box)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from branet_pacs.evaluation.metrics import dice, json_safe
from branet_pacs.imaging.geometry import box_iou, mask_box
from branet_pacs.types import Box

log = logging.getLogger(__name__)

OOF_PROPOSALS = "oof-proposals.json"   # written by `branet train-detector` into its work folder


@dataclass(frozen=True)
class ImageProposals:
    """One image's true lesion boxes and the detector's candidates at any score (best first, the top few)."""

    name: str
    category: str                              # benign | malignant | normal
    truth: tuple[Box, ...]
    proposals: tuple[tuple[Box, float], ...]   # (box, score)

    def kept(self, min_score: float, max_proposals: int) -> list[tuple[Box, float]]:
        """The proposals the detector makes with these settings (the same as proposing with them: candidates
        come best first, and a lower-scored candidate never changes which better ones are kept)."""
        return [p for p in self.proposals if p[1] >= min_score][:max_proposals]


def proposal_metrics(images: Sequence[ImageProposals], *, min_score: float, max_proposals: int = 3) -> dict:
    """Hit rates (any of the top-k proposals with IoU >= 0.5 / 0.3 with a true lesion box), top-1 hit rate,
    lesion recall, images with no proposal, false proposals per normal image and per lesion image."""
    per_category: dict[str, dict[str, list[float]]] = {}
    for image in images:
        proposals = image.kept(min_score, max_proposals)
        stats = per_category.setdefault(image.category, {})
        stats.setdefault("proposals", []).append(len(proposals))
        gts = image.truth
        if not gts:
            continue
        ious = np.array([[box_iou(tuple(p[0]), tuple(g)) for g in gts] for p in proposals]).reshape(
            len(proposals), len(gts))
        best = float(ious.max()) if ious.size else 0.0
        stats.setdefault("hit50", []).append(best >= 0.5)
        stats.setdefault("hit30", []).append(best >= 0.3)
        stats.setdefault("top1_hit50", []).append(bool(ious.size and ious[0].max() >= 0.5))
        stats.setdefault("best_iou", []).append(best)
        stats.setdefault("none", []).append(len(proposals) == 0)
        stats.setdefault("false", []).append(int((ious.max(axis=1) < 0.3).sum()) if ious.size else 0)
        for g in range(len(gts)):
            stats.setdefault("lesion_recall50", []).append(bool(ious.size and ious[:, g].max() >= 0.5))

    def summary(groups: list[str]) -> dict:
        merged: dict[str, list[float]] = {}
        for name in groups:
            for key, values in per_category.get(name, {}).items():
                merged.setdefault(key, []).extend(values)
        out: dict[str, float | int] = {}
        if "hit50" in merged:
            out.update({
                "lesion_images": len(merged["hit50"]),
                "hit_rate_iou50": float(np.mean(merged["hit50"])),
                "hit_rate_iou30": float(np.mean(merged["hit30"])),
                "top1_hit_rate_iou50": float(np.mean(merged["top1_hit50"])),
                "lesion_recall_iou50": float(np.mean(merged["lesion_recall50"])),
                "mean_best_iou": float(np.mean(merged["best_iou"])),
                "no_proposal_fraction": float(np.mean(merged["none"])),
                "false_proposals_per_lesion_image": float(np.mean(merged["false"])),
            })
        elif "proposals" in merged:
            props = np.array(merged["proposals"])
            out.update({"normal_images": int(len(props)),
                        "false_proposals_per_normal_image": float(props.mean()),
                        "normal_images_with_proposal": float((props > 0).mean())})
        return out

    lesion_cats = [c for c in ("benign", "malignant") if c in per_category]
    result = {"min_score": min_score, "max_proposals": max_proposals, "lesion": summary(lesion_cats)}
    for category in lesion_cats:
        result[category] = summary([category])
    if "normal" in per_category:
        result["normal"] = summary(["normal"])
    return result


def write_oof_proposals(path: Path, images: Sequence[ImageProposals]) -> None:
    rows = {image.name: {"category": image.category, "truth": [list(b) for b in image.truth],
                         "proposals": [{"box": list(box), "score": round(float(score), 4)}
                                       for box, score in image.proposals]} for image in images}
    path.write_text(json.dumps(rows, indent=1))


# ------------------------------------------------------------------------------------ LiteMedSAM on proposals
def evaluate_proposals(args: argparse.Namespace) -> int:
    """Dice of LiteMedSAM masks from the top out-of-fold proposal vs from the true box, on BUSI/MIAS masks."""
    from branet_pacs.datasets.readers import read_dataset
    from branet_pacs.models.runtime import configure_torch
    from branet_pacs.models.segmenter import LiteMedSAMSegmenter

    configure_torch(args.threads)
    kind, src = args.data[0].lower(), Path(args.data[1])
    proposals = json.loads((Path(args.work) / OOF_PROPOSALS).read_text())
    names = sorted(n for n, row in proposals.items() if row["category"] != "normal")
    rng = np.random.default_rng(args.seed)
    if args.limit and len(names) > args.limit:
        names = sorted(rng.choice(names, size=args.limit, replace=False).tolist())
    wanted = set(names)
    cases = {c.name: c for c in read_dataset(kind, src) if c.name in wanted}
    segmenter = LiteMedSAMSegmenter(args.device)
    rows = []
    for name in names:
        case = cases[name]
        truth_masks = [lesion.mask for lesion in case.lesions]
        truth_boxes = [mask_box(m) for m in truth_masks]
        top = proposals[name]["proposals"][0] if proposals[name]["proposals"] else None
        boxes = truth_boxes + ([tuple(top["box"])] if top else [])
        masks = segmenter.decode(segmenter.embed(case.pixels()), boxes)
        box_dice = [dice(m, t) for m, t in zip(masks, truth_masks)]
        auto = {"dice_top": 0.0, "score": None, "iou_top": 0.0}
        if top:
            ious = [box_iou(tuple(top["box"]), b) for b in truth_boxes]
            target = int(np.argmax(ious))
            auto = {"dice_top": dice(masks[-1], truth_masks[target]), "score": top["score"],
                    "iou_top": float(ious[target])}
        rows.append({"name": name, "category": case.category, "dice_true_box": float(np.mean(box_dice)), **auto})
        log.info("%s: true-box Dice %.3f, top-proposal Dice %.3f (score %s)", name, rows[-1]["dice_true_box"],
                 auto["dice_top"], auto["score"])
    min_score = args.min_score

    def mean(key: str, subset) -> float:
        return float(np.mean([r[key] for r in subset])) if subset else float("nan")

    gated = [r["dice_top"] if (r["score"] or 0.0) >= min_score else 0.0 for r in rows]
    summary = {
        "dataset": kind, "images": len(rows),
        "sampled_from": len([n for n, r in proposals.items() if r["category"] != "normal"]),
        "seed": args.seed, "segmenter": segmenter.name,
        "dice_true_box_mean": mean("dice_true_box", rows),
        "dice_top_proposal_mean": mean("dice_top", rows),
        "dice_top_proposal_median": float(np.median([r["dice_top"] for r in rows])) if rows else float("nan"),
        f"dice_top_proposal_mean_zero_below_{min_score}": float(np.mean(gated)) if rows else float("nan"),
        "by_category": {c: {"n": len(sub), "dice_true_box_mean": mean("dice_true_box", sub),
                            "dice_top_proposal_mean": mean("dice_top", sub)}
                        for c in ("benign", "malignant") if (sub := [r for r in rows if r["category"] == c])},
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe(summary, digits=6), indent=2) + "\n")
    print(f"{len(rows)} lesion images: LiteMedSAM Dice true box {summary['dice_true_box_mean']:.3f}, "
          f"top proposal {summary['dice_top_proposal_mean']:.3f} (0 when score < {min_score}: "
          f"{summary[f'dice_top_proposal_mean_zero_below_{min_score}']:.3f})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    evaluate = subparsers.add_parser(
        "evaluate-proposals", help="LiteMedSAM Dice from the detector's out-of-fold top proposal vs the true box")
    evaluate.add_argument("--data", nargs=2, metavar=("DATASET", "SRC"), required=True)
    evaluate.add_argument("--work", required=True, help=f"the train-detector work folder ({OOF_PROPOSALS})")
    evaluate.add_argument("--out", required=True, help="JSON report")
    evaluate.add_argument("--limit", type=int, default=0, help="random sample of lesion images (0 = all)")
    evaluate.add_argument("--min-score", type=float, default=0.5)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--threads", type=int, default=0)
    evaluate.add_argument("--device", default="auto")
    evaluate.set_defaults(func=evaluate_proposals)
