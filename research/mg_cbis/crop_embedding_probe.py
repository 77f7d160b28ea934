"""Does LiteMedSAM see more of a mass when it encodes the lesion instead of the whole film?

The product pools LiteMedSAM's embedding of the whole image (`lesion_features.folder_features`): the encoder sees a
mammogram at 256 px on its long side, so a 2 cm mass covers ~5x5 cells of its 64x64 feature grid. The "litemedsam-crop"
input encodes a square crop around each ROI's box instead (2.5x the box's longer side, black outside the film,
`models.segmenter.lesion_crop_embedding`), prompts the box in the crop, and pools the same way. Then, on the same
patient-grouped folds as the shipped mg-resnet18 (its oof_predictions.csv), it scores the feature head with the film
embedding, with the crop embedding, and with both, each alone and combined with the shipped CNN; and the cross-site
check (fit on all of CBIS-DDSM, score mini-MIAS lesions).

The shipped CNN's out-of-fold logit is read from oof_predictions.csv's p_cnn, or for older models recovered from it
(the product's p = mean of the CNN and head
logits): cnn = 2 logit(p) - head, with the shipped head (its inputs and C read from the model's metrics.json: 2.0.0
film + descriptors, 2.1.0 film + crop + descriptors) refitted on the same training folds.

    python research/mg_cbis/crop_embedding_probe.py /work/rois/cbis-ddsm [--mias /work/rois/mias]

Crop features are cached per folder in features-litemedsam-crop.npz (~1 s per ROI on 2 cores).
"""
import argparse
import csv
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from branet_pacs.datasets.rois import load_roi_set
from branet_pacs.models.feature_head import FeatureHead, logit
from branet_pacs.models.runtime import configure_torch
from branet_pacs.train.lesion_features import folder_crop_features, folder_descriptors, folder_features
from common import breast_level, grouped_bootstrap, head_out_of_fold, nested_weight

SHIPPED = Path("models/mg-resnet18")
C_FILM, C_DESCRIPTORS = 0.003, 0.1


def shipped_oof(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(p of the shipped product, fold) per ROI file from the shipped model's oof_predictions.csv."""
    with open(SHIPPED / "oof_predictions.csv") as f:
        rows = {r["file"]: r for r in csv.DictReader(f)}
    return (np.array([float(rows[f]["p_malignant"]) for f in files]),
            np.array([int(rows[f]["fold"]) for f in files]))


def shipped_cnn_logit(files: list[str], p_product: np.ndarray, shipped_head: np.ndarray) -> np.ndarray:
    """The shipped CNN's out-of-fold logit: oof_predictions.csv's p_cnn (written since 2.3.0), else recovered from a
    plain-mean product as 2 logit(p) - head."""
    with open(SHIPPED / "oof_predictions.csv") as f:
        rows = {r["file"]: r for r in csv.DictReader(f)}
    if "p_cnn" in next(iter(rows.values())):
        return logit(np.array([float(rows[f]["p_cnn"]) for f in files]))
    return 2 * logit(p_product) - shipped_head


def shipped_head_recipe() -> tuple[list[str], list[float]]:
    """The shipped model's head inputs and their C, as `branet train` recorded them."""
    settings = json.loads((SHIPPED / "metrics.json").read_text())["settings"]
    return list(settings["feature_head_inputs"]), [float(c) for c in settings["feature_head_c"]]


def head_oof(blocks: list[np.ndarray], C: list[float], y: np.ndarray, fold: np.ndarray) -> np.ndarray:
    return head_out_of_fold(np.concatenate(blocks, axis=1), [b.shape[1] for b in blocks], C, y, fold)


def breast_auc(files: list[str], groups, y: np.ndarray, z: np.ndarray) -> float:
    return roc_auc_score(*breast_level(files, groups, y, z))


def line(name: str, y: np.ndarray, z: np.ndarray, fold=None, extra: str = "") -> str:
    per_fold = "" if fold is None else " (" + " / ".join(
        f"{roc_auc_score(y[fold == k], z[fold == k]):.3f}" for k in np.unique(fold)) + ")"
    return (f"{name:<44} AUC {roc_auc_score(y, z):.3f}{per_fold}  bal. acc {balanced_accuracy_score(y, z > 0):.3f}"
            f"{extra}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cbis", type=Path)
    parser.add_argument("--mias", type=Path)
    parser.add_argument("--c-crop", type=float, nargs="+", default=[0.001, 0.003, 0.01])
    parser.add_argument("--pick", type=float, default=0.03, help="the crop block's C for the weight and bootstrap")
    args = parser.parse_args()
    configure_torch(2)
    rois = load_roi_set(args.cbis)
    y, files, groups = rois.labels, list(rois.files), rois.groups
    film, desc, crop = folder_features(args.cbis), folder_descriptors(args.cbis), folder_crop_features(args.cbis)
    p_product, fold = shipped_oof(files)
    inputs, shipped_c = shipped_head_recipe()
    blocks = {"litemedsam": film, "litemedsam-crop": crop, "lesion-descriptors": desc}
    shipped_head = head_oof([blocks[name] for name in inputs], shipped_c, y, fold)
    cnn = shipped_cnn_logit(files, p_product, shipped_head)
    print(f"CBIS-DDSM {len(y)} ROIs, the shipped model's 5 grouped folds")

    def both(name, z):
        print(line(name, y, z, fold, f"  breast {breast_auc(files, groups, y, z):.3f}"))
        z2 = (z + cnn) / 2
        print(line("  + shipped CNN", y, z2, fold, f"  breast {breast_auc(files, groups, y, z2):.3f}"))

    print(line("shipped CNN (recovered)", y, cnn, fold))
    both(f"shipped head ({' + '.join(inputs)})", shipped_head)
    for c in args.c_crop:
        both(f"head crop (C {c})", head_oof([crop], [c], y, fold))
        both(f"head crop + descriptors (C {c}, 0.1)", head_oof([crop, desc], [c, C_DESCRIPTORS], y, fold))
        both(f"head film + crop + descriptors (C {c})", head_oof([film, crop, desc], [C_FILM, c, C_DESCRIPTORS], y,
                                                                 fold))
    pick = head_oof([film, crop, desc], [C_FILM, args.pick, C_DESCRIPTORS], y, fold)
    weighted, weights = nested_weight(cnn, pick, y, fold)
    print(line(f"learned CNN weight (nested; w per fold {weights})", y, weighted, fold))
    low, mid, high = grouped_bootstrap(y, np.array(groups), (pick + cnn) / 2, (shipped_head + cnn) / 2)
    print(f"product with the crop block (C {args.pick}) minus shipped product: AUC {mid:+.3f} "
          f"(patient bootstrap 95 % CI {low:+.3f} to {high:+.3f})")
    if args.mias:
        from branet_pacs.models.classifier import MalignancyClassifier

        mias = load_roi_set(args.mias)
        m_film, m_desc = folder_features(args.mias), folder_descriptors(args.mias)
        m_crop = folder_crop_features(args.mias)
        classifier = MalignancyClassifier.load("models", "MG", device="cpu")
        m_cnn = logit(classifier.predict(mias.pixels.astype(np.float32) / 127.5 - 1.0))
        print(f"\nCBIS-DDSM -> mini-MIAS ({len(mias.labels)} lesions), heads fitted on all of CBIS-DDSM")
        print(line("shipped CNN", mias.labels, m_cnn))
        for name, train, test, C in [
                ("head film + descriptors", [film, desc], [m_film, m_desc], [C_FILM, C_DESCRIPTORS]),
                *[(f"head crop + descriptors (C {c})", [crop, desc], [m_crop, m_desc], [c, C_DESCRIPTORS])
                  for c in args.c_crop],
                *[(f"head film + crop + descriptors (C {c})", [film, crop, desc], [m_film, m_crop, m_desc],
                   [C_FILM, c, C_DESCRIPTORS]) for c in args.c_crop]]:
            head = FeatureHead.fit(np.concatenate(train, axis=1), y, C, [b.shape[1] for b in train])
            z = logit(head.predict(np.concatenate(test, axis=1)))
            print(line(name, mias.labels, z))
            print(line("  + shipped CNN", mias.labels, (z + m_cnn) / 2))


if __name__ == "__main__":
    main()
