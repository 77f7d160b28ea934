"""The `shapefeat.py` descriptors on LiteMedSAM masks prompted with the true box and with the out-of-fold automatic
top candidate (from the `explore.py` records), at full resolution and in ROI space.

    python research/pipeline_eval/samshape.py SHARD NSHARD OUT.jsonl
"""
import json
import sys
import warnings

import numpy as np
from skimage.transform import resize

from branet_pacs.imaging.geometry import mask_box
from branet_pacs.imaging.roi import crop_padded, extract_roi, roi_window
from branet_pacs.models.runtime import configure_torch
from branet_pacs.models.segmenter import LiteMedSAMSegmenter

from common import US_RECORDS, cases, read_records
from shapefeat import features


def both(image: np.ndarray, mask: np.ndarray) -> dict | None:
    if not mask.any():
        return None
    box = mask_box(mask)
    window = roi_window(box, 0.15)
    roi_mask = resize(crop_padded(mask.astype(np.float32), window), (128, 128), order=0, anti_aliasing=False) > 0.5
    roi = (extract_roi(image, box, 0.15) + 1) / 2
    return {"full": features(image, mask), "roi": features(roi, roi_mask) if roi_mask.any() else None,
            "mask_sum": int(mask.sum())}


def main(argv: list[str]) -> None:
    warnings.filterwarnings("ignore")
    configure_torch(1)
    shard, nshard, out = int(argv[0]), int(argv[1]), argv[2]
    auto = read_records(US_RECORDS)
    segmenter = LiteMedSAMSegmenter("cpu")
    chosen = [c for c in cases("busi") if c.category != "normal"][shard::nshard]
    with open(out, "w") as handle:
        for i, case in enumerate(chosen):
            image = case.pixels()
            embedding = segmenter.embed(image)
            boxes = [mask_box(lesion.mask) for lesion in case.lesions]
            findings = auto[case.name]["findings"]
            masks = segmenter.decode(embedding, boxes + ([tuple(findings[0]["pbox"])] if findings else []))
            record = {"name": case.name, "category": case.category,
                      "truthmask": [both(image, lesion.mask) for lesion in case.lesions],
                      "sam_truthbox": [both(image, m) for m in masks[:len(boxes)]],
                      "sam_auto": both(image, masks[-1]) if findings else None}
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            print(i, len(chosen), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
