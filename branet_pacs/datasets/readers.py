"""The dataset readers by name (what `--data NAME SRC` and `branet prepare NAME` accept)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from branet_pacs.datasets import bus_uclm, busi, cbis_ddsm, mias
from branet_pacs.datasets.cases import Case

# name -> (reader of a dataset folder, modality, citation)
READERS: dict[str, tuple[Callable[[Path], Iterator[Case]], str, str]] = {
    "busi": (busi.read_busi, "US", busi.CITATION),
    "bus-uclm": (bus_uclm.read_bus_uclm, "US", bus_uclm.CITATION),
    "mias": (mias.read_mias, "MG", mias.CITATION),
    "cbis-ddsm": (cbis_ddsm.read_cbis_ddsm, "MG", cbis_ddsm.CITATION),
}


def read_dataset(name: str, src: str | Path) -> list[Case]:
    """Every case of the dataset `name` in folder `src` (all categories)."""
    if name not in READERS:
        raise ValueError(f"unknown dataset '{name}' (known: {', '.join(sorted(READERS))})")
    return list(READERS[name][0](Path(src)))


def modality_of(name: str) -> str:
    return READERS[name][1]


def citation_of(name: str) -> str:
    return READERS[name][2] if name in READERS else f"Dataset: {name}"
