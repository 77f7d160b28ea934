"""Any dataset as a CSV of lesion boxes: `image,label,x0,y0,x1,y1[,group]`, image paths relative to IMAGES.

Column aliases: filename/file/path, class/severity/pathology, xmin/ymin/xmax/ymax, patient/patient_id. Without a
group column each image is its own group. Boxes are source pixels, x1/y1 exclusive.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

from branet_pacs.datasets.cases import Case, Lesion, image_category, normalise_label

SITE = "boxes"
_ALIASES = {
    "image": ("image", "filename", "file", "path", "image_path"),
    "label": ("label", "class", "severity", "pathology"),
    "x0": ("x0", "xmin", "x_min"), "y0": ("y0", "ymin", "y_min"),
    "x1": ("x1", "xmax", "x_max"), "y1": ("y1", "ymax", "y_max"),
    "group": ("group", "patient", "patient_id"),
}


def read_boxes(csv_path: str | Path, images: str | Path, site: str = SITE) -> Iterator[Case]:
    """One case per image named in the CSV (sorted by path), its lesions sorted by (x0, y0)."""
    csv_path, images = Path(csv_path), Path(images)
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        header = {name.strip().lower(): name for name in reader.fieldnames or ()}
        columns: dict[str, str] = {}
        for key, aliases in _ALIASES.items():
            found = next((header[a] for a in aliases if a in header), None)
            if found is None and key != "group":
                raise ValueError(f"{csv_path}: no column for {key} (accepted: {', '.join(aliases)})")
            if found is not None:
                columns[key] = found
        rows = list(reader)
    by_image: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: (r[columns["image"]].strip(), float(r[columns["x0"]]),
                                           float(r[columns["y0"]]))):
        by_image.setdefault(row[columns["image"]].strip(), []).append(row)
    for rel, image_rows in by_image.items():
        yield _case(rel, image_rows, images, columns, site)


def _case(rel: str, rows: list[dict], images: Path, columns: dict[str, str], site: str) -> Case:
    name = re.sub(r"[^A-Za-z0-9_.()-]+", "_", str(Path(rel).with_suffix("")))
    group = next((r[columns["group"]].strip() for r in rows if "group" in columns and r[columns["group"]].strip()),
                 name)
    path = images / rel
    if not path.exists():
        return Case(name, path, "benign", group, site=site, notes=(f"{rel}: image file missing",),
                    all_lesions_known=False)
    lesions, notes = [], []
    for row in rows:
        box = tuple(int(round(float(row[columns[k]]))) for k in ("x0", "y0", "x1", "y1"))
        if box[2] <= box[0] or box[3] <= box[1]:
            notes.append(f"{rel}: empty box {' '.join(str(v) for v in box)}")
            continue
        lesions.append(Lesion(normalise_label(row[columns["label"]]), box))  # type: ignore[arg-type]
    return Case(name, path, image_category(tuple(lesions)), group, tuple(lesions), site, tuple(notes),
                all_lesions_known=len(lesions) == len(rows))
