"""Make a models dir = shipped models with the US classifier replaced by a trained variant (exploration only)."""
import json, shutil, sys
from pathlib import Path
from branet_pacs.models.manifest import file_sha256
src, variant, out = Path("models"), Path(sys.argv[1]), Path(sys.argv[2])
margin = float(sys.argv[3]) if len(sys.argv) > 3 else 0.15
shutil.rmtree(out, ignore_errors=True)
shutil.copytree(src, out, ignore=shutil.ignore_patterns("checkpoints"))
target = out / "us-resnet18"
shutil.copy(variant / "weights.safetensors", target / "weights.safetensors")
(target / "checkpoints").symlink_to((variant / "checkpoints").resolve())
metrics = json.loads((variant / "metrics.json").read_text())
manifest = json.loads((out / "manifest.json").read_text())
for m in manifest["models"]:
    if m["name"] == "us-resnet18":
        m["sha256"] = file_sha256(target / "weights.safetensors")
        m["threshold"] = metrics["threshold"]
        m["input"]["margin"] = margin
(out / "manifest.json").write_text(json.dumps(manifest, indent=2))
print("ok", metrics["threshold"], metrics["summary"]["roc_auc"]["mean"])
