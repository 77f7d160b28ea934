"""Configuration: typed defaults here, overridden by a TOML file (config/branet.toml is the documented copy)."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_FILE = REPO_ROOT / "config" / "branet.toml"
DEFAULT_MODELS_DIR = REPO_ROOT / "models"


@dataclass(frozen=True)
class IngestRules:
    """Which instances count as breast images (DICOM PS3.3 vocabulary)."""

    # Modalities analysed whatever their body part (a PACS routed them here).
    breast_modalities: tuple[str, ...] = ("MG", "US")
    # Modalities analysed only when BodyPartExamined is one of `breast_body_parts`.
    body_part_modalities: tuple[str, ...] = ("DX", "CR", "RG", "SC", "OT")
    breast_body_parts: tuple[str, ...] = ("BREAST",)
    # US with an empty BodyPartExamined is accepted; a different body part is skipped.
    accept_us_without_body_part: bool = True
    # MG "FOR PROCESSING" (raw detector) images are skipped unless enabled.
    accept_for_processing: bool = False
    # Multi-frame US: "representative" (one frame) or "all".
    us_frames: str = "representative"
    # Largest number of frames decoded from one multi-frame instance when us_frames = "all".
    max_frames: int = 64
    # Limits checked before anything is decoded (a hostile or broken file must not exhaust memory); the reason of
    # an instance over a limit names it. Bytes count the file as stored and, when deflated, as inflated.
    max_input_bytes: int = 1 << 30           # 1 GiB
    max_frame_pixels: int = 100_000_000      # rows x columns of one frame (a 10,000 x 10,000 film)
    max_instance_frames: int = 5000


DEFAULT_MAX_FINDINGS = 3
DEFAULT_MIN_PROPOSAL_SCORE = 0.5


@dataclass(frozen=True)
class SegmentationSettings:
    segmenter: str = "litemedsam"          # "litemedsam" or "sam"
    sam_checkpoint: str = ""               # user-supplied SAM ViT checkpoint (segment-anything)
    sam_model_type: str = "vit_b"          # vit_b | vit_l | vit_h
    # most lesions reported per image, per modality (others: DEFAULT_MAX_FINDINGS)
    max_findings: dict[str, int] = field(default_factory=lambda: {"US": 1, "MG": 3})
    # detector confidence below which a candidate is dropped: one number for every modality, or per modality
    # (others: DEFAULT_MIN_PROPOSAL_SCORE); each detector's operating point, chosen on its out-of-fold FROC curve
    min_proposal_score: dict[str, float] | float = field(default_factory=lambda: {"US": 0.5, "MG": 0.9})
    # modalities whose best candidate is reported even below min_proposal_score (if it reaches best_proposal_min_score)
    report_best_proposal: tuple[str, ...] = ("US",)
    best_proposal_min_score: float = 0.02
    roi_margin: float = 0.15               # context around the lesion box, as a fraction of its size

    def max_findings_for(self, modality: str) -> int:
        return int(self.max_findings.get(modality.upper(), DEFAULT_MAX_FINDINGS))

    def min_proposal_score_for(self, modality: str) -> float:
        if isinstance(self.min_proposal_score, dict):
            return float(self.min_proposal_score.get(modality.upper(), DEFAULT_MIN_PROPOSAL_SCORE))
        return float(self.min_proposal_score)

    def reports_best_proposal(self, modality: str) -> bool:
        return modality.upper() in {m.upper() for m in self.report_best_proposal}


# The default UID root: "2.25" makes every output UID a name-based UUID (RFC 9562 version 5, in the project's
# namespace) written as a 2.25 UID (PS3.5 B.2), so it needs no registered organisation root.
UUID_UID_ROOT = "2.25"
_ORG_ROOT = re.compile(r"^[1-9][0-9]*(\.(0|[1-9][0-9]*))*\.$")
MAX_ORG_ROOT = 40   # leaves at least 24 digits of hash in a 64-character UID


def check_uid_root(root: str) -> str:
    """`root` when it is "2.25" or an organisation root ending in "." of at most 40 characters; else ValueError."""
    if root == UUID_UID_ROOT or (_ORG_ROOT.match(root) and len(root) <= MAX_ORG_ROOT):
        return root
    raise ValueError(f"[output] uid_root {root!r}: use \"{UUID_UID_ROOT}\" (UUID-derived UIDs) or an organisation "
                     f"root of digits and dots ending in '.', at most {MAX_ORG_ROOT} characters")


@dataclass(frozen=True)
class OutputSettings:
    series_description_prefix: str = "BraNet RESEARCH USE ONLY"
    # Root under which output UIDs are derived: "2.25" (UUID-derived, the default) or your organisation's root,
    # e.g. "1.2.826.0.1.3680043.10.1234." (digits and dots, at most 40 characters).
    uid_root: str = UUID_UID_ROOT
    seg_series_number: int = 9801
    sr_series_number: int = 9802
    institution_name: str = ""
    # Also write a Mammography CAD SR (TID 4000) for every analysed mammogram (on by default), for PACS and
    # mammography workstations that overlay CAD marks (branet_pacs/dicom/cad_sr.py), in its own series.
    mammography_cad_sr: bool = True
    cad_sr_series_number: int = 9803

    def __post_init__(self) -> None:
        check_uid_root(self.uid_root)


@dataclass(frozen=True)
class Config:
    ingest: IngestRules = field(default_factory=IngestRules)
    segmentation: SegmentationSettings = field(default_factory=SegmentationSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    models_dir: str = str(DEFAULT_MODELS_DIR)
    device: str = "auto"                   # "auto", "cpu", "cuda"
    threads: int = 0                       # intra-op threads per process (torch, ONNX Runtime); 0 = cores / processes
    engine: str = "onnx"                   # "onnx" (ONNX Runtime on the CPU) or "torch" (eager PyTorch)
    engine_cache: str = ""                 # exported ONNX graphs; "" = ~/.cache/branet-pacs/onnx


class ConfigError(ValueError):
    """The settings file cannot be used as it is: the message names the file, the tables and every key at fault."""


def _merge(cls: type, values: dict[str, Any], where: str, problems: list[str]) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        problems.append(f"{where}: unknown setting{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(repr(k) for k in unknown)} (known: {', '.join(sorted(known))})")
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            continue
        default = known[key].default_factory() if known[key].default_factory is not dataclasses.MISSING \
            else known[key].default
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                problems.append(f"{where}: [{key}] must be a table")
                continue
            kwargs[key] = _merge(type(default), value, f"{where} [{key}]", problems)
        elif isinstance(default, tuple):
            kwargs[key] = tuple(value) if isinstance(value, (list, tuple)) else value
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        problems.append(f"{where}: {exc}")
        return cls()


def load_config(path: str | Path | None = None) -> Config:
    """Defaults, overridden by `path` (or config/branet.toml when it exists and no path is given).

    Raises ConfigError naming every unknown key and bad value at once (not only the first)."""
    path = Path(path) if path else (DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.exists() else None)
    if path is None:
        return Config()
    try:
        with open(path, "rb") as handle:
            values = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the settings file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    problems: list[str] = []
    config = _merge(Config, values, str(path), problems)
    if problems:
        raise ConfigError("; ".join(problems))
    if config.engine not in ("onnx", "torch"):
        raise ConfigError(f"{path}: engine must be 'onnx' or 'torch', got {config.engine!r}")
    if not Path(config.models_dir).is_absolute():
        config = dataclasses.replace(config, models_dir=str((Path(path).parent / config.models_dir).resolve()))
    return config
