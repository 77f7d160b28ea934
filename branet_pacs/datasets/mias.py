"""mini-MIAS (Suckling et al. 1994): 1024x1024 films `SRC/mdbNNN.png` and `SRC/Info.txt`.

Info.txt lines: `REFNUM BG CLASS [SEVERITY [X Y RADIUS]]`, one per abnormality (NORM films have one line and no
abnormality), origin at the bottom-left corner: image row = height - Y. A lesion is a disk (centre, radius); its
box is centre ± max(radius, `min_radius`). Some calcification lines have no centre: the film keeps its other
lesions and says so in its notes. Left/right films of one woman are consecutive numbers: patient = (n + 1) // 2.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from branet_pacs.datasets.cases import Case, Lesion, image_category, normalise_label

SITE = "mias"
CITATION = ("mini-MIAS — Suckling J et al. The Mammographic Image Analysis Society digital mammogram database. "
            "Exerpta Medica, International Congress Series 1069 (1994) 375-378. Research use only (MIAS licence).")


@dataclass(frozen=True)
class InfoLine:
    refnum: str
    abnormality: str          # CIRC, SPIC, CALC, ... or NORM
    severity: str             # B | M | ""
    centre: tuple[int, int, int] | None   # (x, y, radius) in Info.txt coordinates (y from the bottom)


def read_info(path: Path) -> dict[str, list[InfoLine]]:
    """REFNUM -> abnormality lines ([] for NORM films), in file order."""
    films: dict[str, list[InfoLine]] = {}
    for line in Path(path).read_text(encoding="latin-1").splitlines():
        parts = line.split()
        if not parts or line.lstrip().startswith("#") or not re.fullmatch(r"mdb\d+", parts[0]):
            continue
        films.setdefault(parts[0], [])
        if len(parts) < 3 or parts[2] == "NORM":
            continue
        coords = parts[4:7]
        centre = tuple(int(c) for c in coords) if len(coords) == 3 and all(
            c.lstrip("-").isdigit() for c in coords) else None
        films[parts[0]].append(InfoLine(parts[0], parts[2], parts[3] if len(parts) > 3 else "", centre))
    return films


VIEW = {"view": "MLO"}   # every mini-MIAS film is a medio-lateral oblique view


def patient(refnum: str) -> str:
    """Left/right films of one woman are consecutive numbers: mdb001 + mdb002 -> patient001."""
    return f"patient{(int(re.sub(r'[^0-9]', '', refnum)) + 1) // 2:03d}"


def read_mias(src: str | Path, min_radius: int = 0, site: str = SITE) -> Iterator[Case]:
    """One case per film listed in Info.txt, in REFNUM order."""
    src = Path(src)
    for refnum, lines in sorted(read_info(src / "Info.txt").items()):
        path = src / f"{refnum}.png"
        if not path.is_file():
            yield Case(refnum, path, "normal" if not lines else "benign", patient(refnum), site=site,
                       notes=(f"{refnum}: image file missing",), all_lesions_known=False, tags=dict(VIEW))
            continue
        if not lines:
            yield Case(refnum, path, "normal", patient(refnum), site=site, tags=dict(VIEW))
            continue
        with Image.open(path) as im:
            width, height = im.size
        lesions, notes = [], []
        for line in lines:
            if line.centre is None:
                notes.append(f"{refnum} {line.abnormality} {line.severity or '?'}: no centre given")
                continue
            lesions.append(_lesion(line, normalise_label(line.severity), height, width, min_radius))
        category = image_category(tuple(lesions)) if lesions else \
            ("malignant" if any(line.severity == "M" for line in lines) else "benign")
        yield Case(refnum, path, category, patient(refnum), tuple(lesions), site, tuple(notes),
                   all_lesions_known=len(lesions) == len(lines), tags=dict(VIEW))


def _lesion(line: InfoLine, label: str, height: int, width: int, min_radius: int) -> Lesion:
    x, y, radius = line.centre
    row = height - y
    half = max(float(radius), float(min_radius))
    box = (int(round(x - half)), int(round(row - half)), int(round(x + half)), int(round(row + half)))
    rows, cols = np.ogrid[:height, :width]
    r = max(radius, 1)
    mask = (rows - row) ** 2 + (cols - x) ** 2 <= r * r
    return Lesion(label, box, mask, traced=False)
