"""LiteMedSAM-embedding features pooled in and around the lesion mask (true masks, and the mask from the
out-of-fold automatic top candidate of the `explore.py` records).

    python research/pipeline_eval/samfeat.py busi|mias SHARD NSHARD OUT.jsonl
"""
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F

from branet_pacs.models.runtime import configure_torch
from branet_pacs.models.segmenter import LiteMedSAMSegmenter

from common import US_RECORDS, cases, read_records


def pool(embedding, mask: np.ndarray) -> list[float]:
    """Mean embedding inside the mask and in a ring around it (64x64 feature grid of a 256x256 input)."""
    nh, nw = embedding.resized_size

    def on_grid(region: np.ndarray) -> torch.Tensor:
        m = torch.from_numpy(region.astype(np.float32))[None, None]
        m = F.pad(F.interpolate(m, size=(nh, nw), mode="area"), (0, 256 - nw, 0, 256 - nh))
        return F.interpolate(m, size=(64, 64), mode="area")[0, 0]

    features = embedding.features[0]
    inside = on_grid(mask)
    inside = (features * inside / inside.sum().clamp(min=1e-6)).sum((1, 2))
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    dy, dx = (y1 - y0) // 2, (x1 - x0) // 2
    ring = np.zeros_like(mask)
    ring[max(0, y0 - dy):y1 + dy, max(0, x0 - dx):x1 + dx] = True
    ring &= ~mask
    if ring.sum() == 0:
        ring = ~mask
    around = on_grid(ring)
    around = (features * around / around.sum().clamp(min=1e-6)).sum((1, 2))
    return torch.cat([inside, around]).numpy().round(5).tolist()


def main(argv: list[str]) -> None:
    configure_torch(1)
    data, shard, nshard, out = argv[0], int(argv[1]), int(argv[2]), argv[3]
    auto = read_records(US_RECORDS if data == "busi" else ("var/exp/mg0.jsonl",))
    segmenter = LiteMedSAMSegmenter("cpu")
    chosen = [c for c in cases(data) if c.category != "normal"][shard::nshard]
    with open(out, "w") as handle:
        for i, case in enumerate(chosen):
            image = case.pixels()
            embedding = segmenter.embed(image)
            record = {"name": case.name, "category": case.category,
                      "truth": [pool(embedding, lesion.mask) for lesion in case.lesions]}
            findings = auto[case.name]["findings"]
            if findings:
                mask = segmenter.decode(embedding, [tuple(findings[0]["pbox"])])[0]
                if not mask.any():
                    x0, y0, x1, y1 = findings[0]["pbox"]
                    mask = np.zeros(image.shape, bool)
                    mask[y0:y1, x0:x1] = True
                record["auto"] = pool(embedding, mask)
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            print(i, len(chosen), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
