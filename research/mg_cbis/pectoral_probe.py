"""How often does `imaging.breast.pectoral_region` find a pectoral muscle on MLO views, and how often would it hide a
lesion? No muscle outlines are held here, so two proxies: the share of MLO films with a muscle found (and its share
of the breast), and the share of true lesions whose box centre falls inside it (should be ~0: the detector no longer
looks there). Plus a contact sheet of films with the estimate drawn, to look at.

    python research/mg_cbis/pectoral_probe.py --data cbis-ddsm ../shared/data/cbis-ddsm \
        --data mias ../shared/data/mias --sheet var/exp/pectoral-sheet.png
"""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from branet_pacs.datasets.readers import read_dataset
from branet_pacs.imaging.breast import breast_mask, pectoral_region
from branet_pacs.imaging.geometry import mask_box


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", nargs=2, action="append", metavar=("DATASET", "SRC"), required=True)
    parser.add_argument("--sheet", type=Path)
    args = parser.parse_args()
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
    if args.sheet and tiles:
        sheet = Image.new("RGB", (200 * 6, 280 * ((len(tiles) + 5) // 6)))
        for i, tile in enumerate(tiles):
            sheet.paste(tile, ((i % 6) * 200, (i // 6) * 280))
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(args.sheet)
        print(f"wrote {args.sheet}")


if __name__ == "__main__":
    main()
