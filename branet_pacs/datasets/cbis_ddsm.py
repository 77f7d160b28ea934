"""CBIS-DDSM masses (Lee et al. 2017): `SRC/films/<patient>_<SIDE>_<VIEW>.jpg` and `SRC/lesions.csv`.

lesions.csv: one row per mass, `film,patient_id,side,view,label,pathology,x0,y0,x1,y1,assessment,mass_shape,
mass_margins,breast_density,subtlety`, boxes in film pixels of the stored copy. The copies were resized to 800x800
without keeping the aspect ratio; the original films are taller than wide. A reader returns the films with their rows
stretched back by `aspect` (rows / columns of the original), boxes scaled to match, so ROIs show masses with their
real proportions, as a real DICOM mammogram would. Default 1.70: the median width/height of the 1,304 mass boxes
in the squashed copies is 1.698 (geometric mean 1.706; CC 1.695, MLO 1.704) — masses are on average as tall as
wide, so that ratio is the squash. `aspect = 1` keeps the stored copies as they are.

Groups are the patient (the CC and MLO views of one breast show the same mass). The masses come with boxes only:
each lesion's mask is the ellipse inscribed in its box (`traced=False`, like mini-MIAS's disks), which the detector
trains on and the evaluation takes the box from; ROIs and the classifier use the box.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from branet_pacs.datasets.cases import Case, Lesion, image_category, normalise_label
from branet_pacs.imaging.geometry import box_ellipse_mask

SITE = "cbis-ddsm"
DEFAULT_ASPECT = 1.70
CITATION = ("CBIS-DDSM — Lee RS, Gimenez F, Hoogi A, et al. A curated mammography data set for use in computer-aided "
            "research. Scientific Data 4, 170177 (2017); The Cancer Imaging Archive (CC BY 3.0).")
TAG_COLUMNS = ("side", "view", "assessment", "mass_shape", "mass_margins", "breast_density", "subtlety")


def read_cbis_ddsm(src: str | Path, aspect: float = DEFAULT_ASPECT, site: str = SITE) -> Iterator[Case]:
    """One case per film listed in lesions.csv (films in file order), every mass of the film a lesion."""
    if aspect <= 0:
        raise ValueError(f"aspect must be positive, got {aspect}")
    src = Path(src)
    films: dict[str, list[dict[str, str]]] = {}
    with open(src / "lesions.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            films.setdefault(row["film"], []).append(row)
    for film, rows in films.items():
        path = src / film
        name = Path(film).stem
        group = rows[0]["patient_id"]
        tags = {column: rows[0][column] for column in TAG_COLUMNS if rows[0].get(column)}
        tags["row_scale"] = f"{aspect:g}"
        if not path.is_file():
            yield Case(name, path, normalise_label(rows[0]["label"]), group, site=site, tags=tags,
                       notes=(f"{film}: image file missing",), all_lesions_known=False)
            continue
        try:
            shape = _restored_shape(path, aspect)
        except OSError as exc:     # not an image PIL can read (PIL's UnidentifiedImageError is an OSError)
            yield Case(name, path, normalise_label(rows[0]["label"]), group, site=site, tags=tags,
                       notes=(f"{film}: unreadable image ({exc.__class__.__name__})",), all_lesions_known=False)
            continue
        lesions = tuple(Lesion(normalise_label(row["label"]), box, box_ellipse_mask(shape, box), traced=False)
                        for box, row in ((_box(row, aspect), row) for row in rows))
        yield Case(name, path, image_category(lesions), group, lesions, site, tags=tags, row_scale=aspect)


def _restored_shape(path: Path, aspect: float) -> tuple[int, int]:
    """(rows, cols) of the film as `load_gray(path, aspect)` returns it; reads only the image header."""
    with Image.open(path) as im:
        return int(round(im.height * aspect)), im.width


def _box(row: dict[str, str], aspect: float) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (float(row[k]) for k in ("x0", "y0", "x1", "y1"))
    return (int(round(x0)), int(round(y0 * aspect)), int(round(x1)), int(round(y1 * aspect)))
