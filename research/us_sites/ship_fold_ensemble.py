"""Ship a `branet train` run's fold models as the classifier: an ensemble of the folds' best-validation weights
(fp16, one safetensors file with member prefixes) plus the run's feature head, into a models folder.

Why: at a site never trained on, the folds' ensemble held better than the one retrained model (leave-one-site-out,
`fold_ensemble.py`: BUSI -> BUS-UCLM ROI AUC 0.842 vs 0.793 with the feature head; BUS-UCLM -> BUSI 0.806 vs 0.800).
Folds are picked by their own validation AUC (`--top K`), never by anything measured at a left-out site. The
threshold is the run's pooled out-of-fold one (each member is one fold's model, so the ensemble has no out-of-fold
predictions of its own; its probabilities are averages of models calibrated alike).

    python research/us_sites/ship_fold_ensemble.py var/train/models/us-resnet18 --top 4 --models models \
        --loso var/logs/fold-ensemble-top4-pmean.log
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

from branet_pacs.models.classifier import load_classifier_networks, save_classifier
from branet_pacs.models.manifest import file_sha256


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path, help="a branet train OUT/<name> folder with checkpoints/fold*/")
    parser.add_argument("--top", type=int, default=4)
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--loso", type=Path, help="fold_ensemble.py output to quote in the card")
    args = parser.parse_args(argv)
    run_manifest = json.loads((args.run.parent / "manifest.json").read_text())
    entry = next(e for e in run_manifest["models"] if e["name"] == args.run.name)
    folds = sorted(args.run.glob("checkpoints/fold*/done.json"))
    val_auc = {f.parent.name: json.loads(f.read_text())["best_val_auc"] for f in folds}
    chosen = sorted(sorted(val_auc, key=val_auc.get, reverse=True)[:args.top])
    members = [net for name in chosen for net in load_classifier_networks(args.run / "checkpoints" / name /
                                                                          "best.safetensors")]
    target = args.models / args.run.name
    target.mkdir(parents=True, exist_ok=True)
    weights = target / "weights.safetensors"
    save_classifier(members, weights, half=True)
    head = target / "feature_head.safetensors"
    shutil.copyfile(args.run / "feature_head.safetensors", head)
    for name in ("MODEL_CARD.md", "roc.png", "confusion_matrix.png", "history.png", "metrics.json"):
        if (args.run / name).exists():
            shutil.copyfile(args.run / name, target / name)

    entry = json.loads(json.dumps(entry))
    entry["file"] = f"{args.run.name}/weights.safetensors"
    entry["sha256"] = file_sha256(weights)
    entry["extra"]["members"] = len(members)
    entry["extra"]["ensemble_of_folds"] = {name: round(val_auc[name], 4) for name in chosen}
    entry["extra"]["feature_head"]["file"] = f"{args.run.name}/feature_head.safetensors"
    entry["extra"]["feature_head"]["sha256"] = file_sha256(head)
    manifest_path = args.models / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["models"] = [entry if m["name"] == entry["name"] else m for m in manifest["models"]]
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")

    card = target / "MODEL_CARD.md"
    text = card.read_text()
    loso = args.loso.read_text() if args.loso else ""
    text = text.replace("\n## Model\n", f"""
## Shipped networks
An ensemble of {len(members)} networks: the best-validation-AUC weights of folds {', '.join(chosen)} (picked by their
own validation AUC: {', '.join(f'{n} {val_auc[n]:.3f}' for n in chosen)}), p(malignant) averaged, then combined
with the feature head as below. Not the retrained single model the sections below describe: at a site never
trained on, the fold ensemble held better (leave-one-site-out, research/us_sites/fold_ensemble.py):

```
{loso.strip()}
```

The threshold is the single-model pooled out-of-fold one (the ensemble has no out-of-fold predictions of its own).
The cross-validation figures below are those of the single models of each fold, i.e. of the members.

## Model
""", 1)
    card.write_text(text)
    print(f"{weights} ({weights.stat().st_size / 2**20:.0f} MiB, {len(members)} members: {chosen}); manifest updated")


if __name__ == "__main__":
    main(sys.argv[1:])
