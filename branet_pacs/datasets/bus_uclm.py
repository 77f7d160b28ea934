"""BUS-UCLM (Vallez et al. 2025; Spain, Siemens ACUSON S2000): the BUSI layout, a second ultrasound site.

The file-name prefix is the patient (`ANFO_002.png` and `ANFO_003.png` are one woman): every image of a patient is
in one fold group. `info.csv` (file,patient,label,doppler,calipers,combined) flags frames with Doppler colour,
burned-in caliper marks and combined views; the flags travel with each case (`Case.tags`) into the ROI manifest.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from branet_pacs.datasets.busi import read_busi_layout
from branet_pacs.datasets.cases import Case

SITE = "bus-uclm"
CITATION = ("BUS-UCLM — Vallez N et al. BUS-UCLM: Breast ultrasound lesion segmentation dataset. Scientific Data "
            "(2025). doi:10.1038/s41597-025-04562-3 (CC BY-NC 4.0: non-commercial use only).")
FLAGS = ("doppler", "calipers", "combined")


def patient(path: Path) -> str:
    """`ALWI_000.png` -> `ALWI`: the name before the last underscore."""
    return path.stem.rsplit("_", 1)[0]


def read_info(src: Path) -> dict[str, dict[str, str]]:
    """info.csv rows keyed by file name (`benign/ANFO_002.png`); {} without the file."""
    path = Path(src) / "info.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        return {row["file"]: row for row in csv.DictReader(handle)}


def read_bus_uclm(src: str | Path, include_normal: bool = True, site: str = SITE) -> Iterator[Case]:
    """BUS-UCLM cases in class order, grouped by patient, with the info.csv flags as tags."""
    src = Path(src)
    info = read_info(src)

    def grouping(paths: list[Path]) -> dict[Path, str]:
        return {p: patient(p) for p in paths}

    def tags(path: Path) -> dict[str, str]:
        row = info.get(f"{path.parent.name}/{path.name}", {})
        return {flag: str(row.get(flag, "")).strip().lower() for flag in FLAGS if flag in row}

    return read_busi_layout(src, include_normal, site, grouping, tags)
