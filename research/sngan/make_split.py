"""Cut BUSI benign/malignant ROIs with the project's one ROI code path and split them 80/20 by source image.

    python research/sngan/make_split.py /work/shared/data/busi /tmp/sngan-split

One ROI per lesion mask of the BUSI reader (extract_roi(image, lesion.box), margin 0.15, as `branet prepare busi`
does), 8-bit PNG via roi_to_uint8. Split: per class, source images shuffled with random.Random(0), 20 % of images
to test/ (all ROIs of an image stay on one side). Only train/ is shown to the GAN and to the classifiers; test/ is scored once per classifier.
"""
import random
import shutil
import sys
from collections import defaultdict
from pathlib import Path

from PIL import Image

from branet_pacs.datasets.busi import read_busi
from branet_pacs.imaging.roi import extract_roi, roi_to_uint8


def make_rois(src: Path, out: Path) -> None:
    for cls in ("benign", "malignant"):
        (out / cls).mkdir(parents=True, exist_ok=True)
    for case in read_busi(src, include_normal=False):
        image = case.pixels()
        stem = case.path.stem.replace(" ", "_").replace("(", "").replace(")", "")
        for k, lesion in enumerate(case.lesions):
            Image.fromarray(roi_to_uint8(extract_roi(image, lesion.box))).save(out / case.category / f"{stem}_{k}.png")


def split(rois: Path, out: Path, test_fraction: float = 0.2, seed: int = 0) -> None:
    rng = random.Random(seed)
    for cls in ("benign", "malignant"):
        groups = defaultdict(list)
        for p in sorted((rois / cls).glob("*.png")):
            groups[p.stem.rsplit("_", 1)[0]].append(p)
        keys = sorted(groups)
        rng.shuffle(keys)
        n_test = round(test_fraction * len(keys))
        for part, chosen in (("test", keys[:n_test]), ("train", keys[n_test:])):
            folder = out / part / cls
            folder.mkdir(parents=True, exist_ok=True)
            for key in chosen:
                for p in groups[key]:
                    shutil.copy2(p, folder / p.name)
            print(part, cls, len(chosen), "images", sum(len(groups[k]) for k in chosen), "ROIs")


def main(argv: list[str]) -> None:
    src, out = Path(argv[0]), Path(argv[1])
    make_rois(src, out / "all")
    split(out / "all", out)


if __name__ == "__main__":
    main(sys.argv[1:])
