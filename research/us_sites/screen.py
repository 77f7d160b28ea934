"""Screening a classifier recipe across ultrasound sites, cheaply: train on one site for a fixed number of epochs
(no inner cross-validation, no early stopping: nothing is tuned on the site scored), score the other site's ROIs
(ROC AUC; flip TTA as shipped models use), both directions, a few seeds. The recipe that wins here is then run
through the full `branet train --validate-by site` procedure.

    python research/us_sites/screen.py OUT.json EPOCHS SEEDS [--scanner-aug] [--roi-jitter 0.25] [--init FILE] ...
"""
import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from branet_pacs.datasets.rois import load_roi_set
from branet_pacs.models.runtime import configure_torch
from branet_pacs.train.classifier import ClassifierTrainSettings, autocast_dtype, fit, predict

SITES = {"busi": "/work/rois/busi", "bus-uclm": "/work/rois/bus-uclm"}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("epochs", type=int)
    parser.add_argument("seeds", type=int)
    parser.add_argument("--scanner-aug", action="store_true")
    parser.add_argument("--roi-jitter", type=float, default=0.25)
    parser.add_argument("--init", default=None)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    configure_torch(args.threads)
    settings = ClassifierTrainSettings(modality="us", epochs=args.epochs, tta=True, roi_jitter=args.roi_jitter,
                                       scanner_aug=args.scanner_aug, init=args.init, weight_decay=args.weight_decay,
                                       lr=args.lr, threads=args.threads, device="cpu")
    data = {site: load_roi_set(path) for site, path in SITES.items()}
    device, amp = torch.device("cpu"), autocast_dtype(torch.device("cpu"), "auto")
    results = {"settings": dataclasses.asdict(settings), "runs": []}
    for seed in range(args.seeds):
        for train_site, test_site in (("busi", "bus-uclm"), ("bus-uclm", "busi")):
            train, test = data[train_site], data[test_site]
            started = time.perf_counter()
            run, _ = fit(f"{train_site} seed {seed}", torch.from_numpy(train.pixels), torch.from_numpy(train.labels),
                         settings, Path(args.out).with_suffix("") / f"{train_site}-{seed}", seed, device, amp,
                         resume=False, stop_after=args.epochs)
            p = predict(run.model, torch.from_numpy(test.pixels), device, tta=True)
            auc = float(roc_auc_score(test.labels, p))
            results["runs"].append({"seed": seed, "train": train_site, "test": test_site, "auc": auc,
                                    "minutes": (time.perf_counter() - started) / 60,
                                    "files": list(test.files), "p": [round(float(x), 6) for x in p]})
            print(f"seed {seed} {train_site} -> {test_site}: AUC {auc:.4f}", flush=True)
            Path(args.out).write_text(json.dumps(results, indent=1))
    for train_site in SITES:
        aucs = [r["auc"] for r in results["runs"] if r["train"] == train_site]
        print(f"{train_site} -> other: mean AUC {np.mean(aucs):.4f} over {len(aucs)} seeds")


if __name__ == "__main__":
    main(sys.argv[1:])
