"""Do caliper marks move the classifier?  BUS-UCLM ROIs scored by the BUSI-trained screen models (`screen.py`
checkpoints OUT/busi-<seed>/last.pt) as prepared, and re-cut from source frames whose marks were painted out
(`imaging.overlays.without_marks`), split by the dataset's own caliper flag. A model distracted by the marks gains
on the caliper frames after painting; a model that ignores them does not move.

    python research/us_sites/calipers.py var/exp/screen-base /work/rois/bus-uclm
"""
import csv
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from branet_pacs.datasets.cases import load_gray
from branet_pacs.datasets.rois import load_roi_set, parse_box, read_prepare_info
from branet_pacs.imaging.overlays import graphic_marks, paint_out
from branet_pacs.imaging.roi import extract_roi, roi_to_uint8
from branet_pacs.models.classifier import build_resnet18
from branet_pacs.models.runtime import configure_torch
from branet_pacs.train.classifier import predict


def main(argv: list[str]) -> None:
    configure_torch(1)
    screen, rois = Path(argv[0]), Path(argv[1])
    data = load_roi_set(rois)
    info = read_prepare_info(rois)
    with open(rois / "manifest.csv") as handle:
        manifest = {row["roi_file"]: row for row in csv.DictReader(handle)}
    painted, marked_px = [], []
    for file in data.files:
        row = manifest[file]
        image = load_gray(Path(info["source_root"]) / row["source"])
        marks = graphic_marks(image)
        marked_px.append(int(marks.sum()))
        painted.append(roi_to_uint8(extract_roi(paint_out(image, marks), parse_box(row["box"]), info["margin"])))
    painted = np.stack(painted)
    calipers = np.array([t.get("calipers") == "true" for t in data.tags])
    y = data.labels
    print(f"marks found: caliper frames median {np.median(np.array(marked_px)[calipers]):.0f} px, "
          f"others {np.median(np.array(marked_px)[~calipers]):.0f} px")
    for run in sorted(screen.glob("busi-[0-9]")):
        model = build_resnet18(0.5)
        model.load_state_dict(torch.load(run / "last.pt", map_location="cpu", weights_only=True)["model"])
        model.eval()
        line = [run.name]
        for name, pixels in (("as prepared", data.pixels), ("marks painted out", painted)):
            p = predict(model, torch.from_numpy(pixels), torch.device("cpu"), tta=True)
            line.append(f"{name}: all {roc_auc_score(y, p):.4f} calipers {roc_auc_score(y[calipers], p[calipers]):.4f} "
                        f"none {roc_auc_score(y[~calipers], p[~calipers]):.4f}")
        print("  |  ".join(line), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
