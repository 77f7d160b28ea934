"""The out-of-fold detector's top score on BUSI normal frames against the lesion images' top scores (from the
`explore.py` records), for the `best_proposal_min_score` trade-off.

    python research/pipeline_eval/normal_scores.py
"""
from pathlib import Path

import numpy as np

from branet_pacs.evaluation.images import OutOfFoldModels, breast_image, case_key

from common import US_RECORDS, cases, read_records


def main(argv: list[str] | None = None) -> None:
    images = cases("busi")
    oof = OutOfFoldModels(Path("models").resolve(), "US", images, "cpu")
    normal = []
    for case in images:
        if case.category != "normal":
            continue
        image = breast_image(case, "US")
        proposals = oof.detector_of[case_key(case)].propose(image.pixels, max_proposals=1, min_score=0.0)
        normal.append(proposals[0].score if proposals else 0.0)
    lesions = {name: (r["category"], r["findings"][0]["score"] if r["findings"] else 0.0)
               for name, r in read_records(US_RECORDS).items()}
    normal = np.array(normal)
    malignant = np.array([s for c, s in lesions.values() if c == "malignant"])
    benign = np.array([s for c, s in lesions.values() if c == "benign"])
    for floor in (0.02, 0.1, 0.2, 0.3, 0.5):
        print(f"floor {floor}: normal with finding {np.mean(normal >= floor):.3f}  malignant "
              f"{np.mean(malignant >= floor):.3f}  benign {np.mean(benign >= floor):.3f}")


if __name__ == "__main__":
    main()
