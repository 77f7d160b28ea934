"""LiteMedSAM image-embedding features of every lesion of an ultrasound dataset, for a feature head beside the CNN.

For each lesion: LiteMedSAM is prompted with the true box (what the pipeline does with a well-placed detector box);
the 256-channel embedding is averaged inside the predicted mask and in a ring around it (512 numbers). Written as
one .npz per dataset: features (n, 512), labels, groups, names.

    python research/us_sites/sam_features.py busi|bus-uclm OUT.npz
"""
import sys
from pathlib import Path

import numpy as np

from branet_pacs.datasets.readers import read_dataset
from branet_pacs.models.runtime import configure_torch
from branet_pacs.models.segmenter import LiteMedSAMSegmenter, pooled_embedding


def main(argv: list[str]) -> None:
    configure_torch(1)
    dataset, out = argv[0], Path(argv[1])
    segmenter = LiteMedSAMSegmenter("cpu")
    rows, labels, groups, names = [], [], [], []
    cases = [c for c in read_dataset(dataset, Path("../shared/data") / dataset) if c.complete and c.lesions]
    for i, case in enumerate(cases):
        image = case.pixels()
        embedding = segmenter.embed(image)
        masks = segmenter.decode(embedding, [lesion.box for lesion in case.lesions])
        for k, (lesion, mask) in enumerate(zip(case.lesions, masks), start=1):
            if not mask.any():
                x0, y0, x1, y1 = lesion.box
                mask = np.zeros(image.shape, bool)
                mask[y0:y1, x0:x1] = True
            rows.append(pooled_embedding(embedding, mask))
            labels.append(int(lesion.label == "malignant"))
            groups.append(case.group)
            names.append(f"{case.name}-{k}")
        if i % 50 == 0:
            print(i, len(cases), flush=True)
    np.savez(out, features=np.stack(rows).astype(np.float32), labels=np.array(labels), groups=np.array(groups),
             names=np.array(names))


if __name__ == "__main__":
    main(sys.argv[1:])
