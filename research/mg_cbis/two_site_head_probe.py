"""The shipped MG head (mg-resnet18 2.3.0 decides by its feature head alone: CNN weight 0) trained on CBIS-DDSM with
mini-MIAS as a second site, against CBIS-DDSM alone — the issue's "optionally with mini-MIAS as a second site".

CBIS-DDSM keeps the shipped model's patient-grouped folds (oof_predictions.csv); mini-MIAS's 93 lesions get their own
grouped folds (`datasets.folds.make_folds`, patients from the manifest), fold k of both sites held out together.
Out of fold per site: the head fitted on both sites' other folds vs on CBIS-DDSM's other folds only (so mini-MIAS's
second row is the cross-site figure again, scored per fold).

    python research/mg_cbis/two_site_head_probe.py /work/rois/cbis-ddsm /work/rois/mias
"""
import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from branet_pacs.datasets.folds import make_folds
from branet_pacs.datasets.rois import load_roi_set
from branet_pacs.models.feature_head import FeatureHead, logit
from crop_embedding_probe import shipped_head_recipe, shipped_oof
from crop_views_probe import shipped_blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cbis", type=Path)
    parser.add_argument("mias", type=Path)
    args = parser.parse_args()
    inputs, c = shipped_head_recipe()
    cbis, mias = load_roi_set(args.cbis), load_roi_set(args.mias)
    _, cbis_fold = shipped_oof(list(cbis.files))
    k_values = np.unique(cbis_fold)
    mias_fold = np.zeros(len(mias), dtype=int)
    for k, (_, held) in zip(k_values, make_folds(mias.labels, mias.groups, len(k_values), seed=0)):
        mias_fold[held] = k
    cbis_blocks = shipped_blocks(args.cbis, inputs)
    widths = [b.shape[1] for b in cbis_blocks]
    x_cbis = np.concatenate(cbis_blocks, axis=1)
    x_mias = np.concatenate(shipped_blocks(args.mias, inputs), axis=1)
    both = {"cbis": np.zeros(len(cbis)), "mias": np.zeros(len(mias))}
    alone = {"cbis": np.zeros(len(cbis)), "mias": np.zeros(len(mias))}
    for k in k_values:
        tc, tm = cbis_fold != k, mias_fold != k
        head_both = FeatureHead.fit(np.concatenate([x_cbis[tc], x_mias[tm]]),
                                    np.concatenate([cbis.labels[tc], mias.labels[tm]]), c, widths)
        head_cbis = FeatureHead.fit(x_cbis[tc], cbis.labels[tc], c, widths)
        for name, head in (("both", head_both), ("cbis", head_cbis)):
            target = both if name == "both" else alone
            target["cbis"][cbis_fold == k] = logit(head.predict(x_cbis[cbis_fold == k]))
            target["mias"][mias_fold == k] = logit(head.predict(x_mias[mias_fold == k]))
    columns = f"CBIS-DDSM OOF ({len(cbis)})", f"mini-MIAS OOF ({len(mias)})"
    print(f"{'trained on':28} {columns[0]:>22} {columns[1]:>22}")
    for name, z in (("CBIS-DDSM + mini-MIAS", both), ("CBIS-DDSM only", alone)):
        print(f"{name:28} {roc_auc_score(cbis.labels, z['cbis']):22.3f} {roc_auc_score(mias.labels, z['mias']):22.3f}")


if __name__ == "__main__":
    main()
