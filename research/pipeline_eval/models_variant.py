"""A models folder = the shipped models with the US classifier replaced by a `branet train --no-register` output, so
`explore.py` can run a candidate out of fold.

    python research/pipeline_eval/models_variant.py TRAINED_DIR OUT_MODELS_DIR [MARGIN]
"""
import json
import shutil
import sys
from pathlib import Path

from branet_pacs.models.manifest import file_sha256


def main(argv: list[str]) -> None:
    src, variant, out = Path("models"), Path(argv[0]), Path(argv[1])
    margin = float(argv[2]) if len(argv) > 2 else 0.15
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("checkpoints"))
    target = out / "us-resnet18"
    shutil.copy(variant / "weights.safetensors", target / "weights.safetensors")
    (target / "checkpoints").symlink_to((variant / "checkpoints").resolve())
    metrics = json.loads((variant / "metrics.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["models"]:
        if entry["name"] == "us-resnet18":
            entry["sha256"] = file_sha256(target / "weights.safetensors")
            entry["threshold"] = metrics["threshold"]
            entry["input"]["margin"] = margin
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print("ok", metrics["threshold"], metrics["summary"]["roc_auc"]["mean"])


if __name__ == "__main__":
    main(sys.argv[1:])
