"""How often does `imaging.breast.pectoral_region` find a pectoral muscle on MLO views, and how often would it hide a
lesion? No muscle outlines are held here, so two proxies: the share of MLO films with a muscle found (and its share
of the breast), and the share of true lesions whose box centre falls inside it (should be ~0: the detector no longer
looks there). Plus a contact sheet of films with the estimate drawn, to look at. With `--oof-proposals` (the
detector's out-of-fold proposals, `oof-proposals.json` in its `branet train-detector` work folder): how many of its
hits and false findings on MLO films lie in the muscle, i.e. what excluding it at inference changes.

    python research/mg_cbis/pectoral_probe.py --data cbis-ddsm ../shared/data/cbis-ddsm \
        --data mias ../shared/data/mias --sheet var/exp/pectoral-sheet.png \
        [--oof-proposals var/detector-work/mg-lesion-detector/oof-proposals.json --min-score 0.5]
"""
import json
import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from branet_pacs.datasets.readers import read_dataset
from branet_pacs.imaging.breast import breast_mask, pectoral_region
from branet_pacs.imaging.geometry import box_iou, mask_box


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", nargs=2, action="append", metavar=("DATASET", "SRC"), required=True)
    parser.add_argument("--sheet", type=Path)
    parser.add_argument("--oof-proposals", type=Path)
    parser.add_argument("--min-score", type=float, default=0.5)
    args = parser.parse_args()
    proposals = json.loads(args.oof_proposals.read_text()) if args.oof_proposals else {}
    counts = {"films": 0, "hits": 0, "hits_in_muscle": 0, "false": 0, "false_in_muscle": 0, "lesions": 0}
    tiles = []
    for dataset, src in args.data:
        cases = [c for c in read_dataset(dataset, src) if c.path.is_file()
                 and c.tags.get("view", "MLO") == "MLO" and c.category != "normal"]
        found, shares, inside, lesions = 0, [], 0, 0
        for index, case in enumerate(tqdm(cases, desc=dataset, mininterval=10)):
            image = case.pixels()
            breast = breast_mask(image)
            muscle = pectoral_region(image, breast)
            if muscle.any():
                found += 1
                shares.append(muscle.sum() / breast.sum())
            for lesion in case.lesions:
                box = mask_box(lesion.mask) if lesion.mask is not None else None
                if box is None:
                    continue
                lesions += 1
                cx, cy = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
                inside += bool(muscle[min(cy, muscle.shape[0] - 1), min(cx, muscle.shape[1] - 1)])
            record = proposals.get(case.name)
            if record is not None:
                _count_proposals(record, muscle, args.min_score, counts)
            if args.sheet and index % max(1, len(cases) // 12) == 0 and len(tiles) < 24:
                rgb = np.stack([image] * 3, -1)
                rgb[muscle] = rgb[muscle] * 0.5 + np.array([0.5, 0.0, 0.0])
                rgb[~breast] *= 0.3
                tile = Image.fromarray((rgb * 255).astype(np.uint8)).resize((200, 280))
                ImageDraw.Draw(tile).text((4, 4), f"{dataset} {case.name[-14:]}", fill=(0, 255, 0))
                tiles.append(tile)
        print(f"{dataset}: {len(cases)} MLO lesion films, pectoral muscle found on {found} ({found / len(cases):.1%}), "
              f"median share of the breast {np.median(shares) if shares else 0:.3f}; lesion centres inside it "
              f"{inside} of {lesions} ({inside / max(lesions, 1):.1%})", flush=True)
    if proposals:
        n = max(counts["films"], 1)
        print(f"detector out of fold on {counts['films']} MLO films (top 3, min_score {args.min_score}): "
              f"{counts['hits']} of {counts['lesions']} lesions hit at IoU >= 0.5, {counts['hits_in_muscle']} of them "
              f"centred in the muscle; false findings {counts['false'] / n:.2f} per film, "
              f"{counts['false_in_muscle'] / n:.2f} per film in the muscle "
              f"({counts['false_in_muscle'] / max(counts['false'], 1):.1%})")
    if args.sheet and tiles:
        sheet = Image.new("RGB", (200 * 6, 280 * ((len(tiles) + 5) // 6)))
        for i, tile in enumerate(tiles):
            sheet.paste(tile, ((i % 6) * 200, (i // 6) * 280))
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(args.sheet)
        print(f"wrote {args.sheet}")


def _count_proposals(record: dict, muscle: np.ndarray, min_score: float, counts: dict) -> None:
    """Hits (IoU >= 0.5 with a true box) and false findings among one film's proposals, and those centred in the
    muscle."""
    def in_muscle(box) -> bool:
        cx, cy = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
        return bool(muscle[min(cy, muscle.shape[0] - 1), min(cx, muscle.shape[1] - 1)])

    kept = [p["box"] for rank, p in enumerate(record["proposals"]) if rank < 3 and p["score"] >= min_score]
    counts["films"] += 1
    counts["lesions"] += len(record["truth"])
    for truth in record["truth"]:
        hit = [b for b in kept if box_iou(tuple(b), tuple(truth)) >= 0.5]
        counts["hits"] += bool(hit)
        counts["hits_in_muscle"] += bool(hit) and in_muscle(hit[0])
    for box in kept:
        if not any(box_iou(tuple(box), tuple(t)) >= 0.5 for t in record["truth"]):
            counts["false"] += 1
            counts["false_in_muscle"] += in_muscle(box)


if __name__ == "__main__":
    main()
