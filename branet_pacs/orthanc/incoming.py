"""What the node refuses at C-STORE, before Orthanc stores (or logs) anything: instances without their identifying
UIDs (Orthanc would log the patient's ID while refusing them itself) and instances over the ingest size limits.
Standard library only: this runs inside Orthanc's embedded interpreter, on the tags Orthanc parsed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


@dataclass(frozen=True)
class IncomingLimits:
    """The ingest limits of the pipeline settings (`[ingest]` in config/branet.toml), copied into the node's
    configuration by `branet orthanc run`."""

    max_input_bytes: int = 1 << 30
    max_frame_pixels: int = 100_000_000
    max_instance_frames: int = 5000


def _number(value: Any) -> float | None:
    try:
        return None if value in (None, "") else float(str(value).split("\\")[0])
    except ValueError:
        return None


def refusal(tags: dict[str, Any], size: int, limits: IncomingLimits) -> str:
    """Why an incoming instance is refused ("" to store it). `tags`: Orthanc's simplified JSON (keyword -> value),
    `size`: the instance's bytes as received."""
    missing = [k for k in REQUIRED_UIDS if not str(tags.get(k) or "").strip()]
    if missing:
        return f"missing required attribute{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
    if size > limits.max_input_bytes:
        return f"{size} bytes exceed the limit ingest.max_input_bytes = {limits.max_input_bytes}"
    rows, cols, frames = _number(tags.get("Rows")), _number(tags.get("Columns")), _number(tags.get("NumberOfFrames"))
    if rows is not None and cols is not None and rows * cols > limits.max_frame_pixels:
        return (f"frame of {int(rows)} x {int(cols)} pixels exceeds the limit ingest.max_frame_pixels = "
                f"{limits.max_frame_pixels}")
    if frames is not None and frames > limits.max_instance_frames:
        return f"NumberOfFrames {int(frames)} exceeds the limit ingest.max_instance_frames = {limits.max_instance_frames}"
    return ""
