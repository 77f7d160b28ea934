"""ResNet18 with an auxiliary lesion-mask head (multi-task), same folds and recipe as us-resnet18 1.1.0.

The mask head (1x1 conv on layer3, 8x8 output) is trained with the ROI's truth mask and thrown away afterwards: the
classifier never sees a mask at inference. bf16 autocast as the trainer uses on a CPU with AMX.

    python research/pipeline_eval/multitask.py ROIS LAMBDA OUT.json
"""
import csv
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.transform import resize
from sklearn.metrics import roc_auc_score
from torch import nn

from branet_pacs.datasets.folds import make_folds
from branet_pacs.datasets.rois import load_roi_set
from branet_pacs.imaging.roi import crop_padded, roi_window
from branet_pacs.models.classifier import build_resnet18
from branet_pacs.models.runtime import configure_torch
from branet_pacs.train.augment import augment_rois, augment_settings
from branet_pacs.train.classifier import class_weights, predict

EPOCHS, PATIENCE, BATCH, LR, WD, SEED = 24, 6, 32, 1e-3, 1e-4, 0


def geometry(x: torch.Tensor, aug, g: torch.Generator) -> torch.Tensor:
    """The geometric half of `augment_rois` (US settings), applied to image and mask channels alike."""
    n = x.shape[0]

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=g)

    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], torch.flip(x, dims=(-1,)), x)
    angle = u(-aug.rotate_deg, aug.rotate_deg) * math.pi / 180
    scale = torch.exp(u(math.log(aug.scale[0]), math.log(aug.scale[1])))
    tx, ty = u(-aug.translate, aug.translate) * 2, u(-aug.translate, aug.translate) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def main(argv: list[str]) -> None:
    configure_torch(1)
    root, lam, out = Path(argv[0]), float(argv[1]), argv[2]
    data = load_roi_set(root)
    with open(root / "manifest.csv", newline="") as handle:
        boxes = {r["roi_file"]: tuple(int(v) for v in r["box"].split()) for r in csv.DictReader(handle)}
    margin = json.load(open(root / "prepare.json")).get("margin", 0.15)

    def roi_mask(f):
        """The lesion's source-frame mask cut through the same window as its ROI (nearest-neighbour to 128x128)."""
        full = np.asarray(Image.open(root / Path(f).parent / "masks" / Path(f).name).convert("L")) > 127
        crop = crop_padded(full.astype(np.float32), roi_window(boxes[f], margin))
        return resize(crop, (128, 128), order=0, anti_aliasing=False) > 0.5

    masks = np.stack([roi_mask(f) for f in data.files])
    print("mask fraction", masks.mean(), flush=True)
    folds = make_folds(data.labels, data.groups if data.grouped else None, 5, SEED)
    aug = augment_settings("us", 0.25)
    intensity_only = replace(aug, hflip=False, rotate_deg=0.0, scale=(1.0, 1.0), translate=0.0)
    results = {"lambda": lam, "folds": []}
    for k, (tr, va) in enumerate(folds, 1):
        torch.manual_seed(SEED)
        model, head = build_resnet18(0.5).to(memory_format=torch.channels_last), nn.Conv2d(256, 1, 1)
        feats = {}
        model.layer3.register_forward_hook(lambda m, i, o: feats.__setitem__("l3", o))
        opt = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=LR, weight_decay=WD)
        steps = math.ceil(len(tr) / BATCH)
        total, warm = EPOCHS * steps, steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                                  0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / (total - warm)))))
        g = torch.Generator().manual_seed(SEED)
        x, y = torch.from_numpy(data.pixels[tr]), torch.from_numpy(data.labels[tr])
        m = torch.from_numpy(masks[tr].astype(np.float32))
        xv, yv = torch.from_numpy(data.pixels[va]), data.labels[va]
        w = class_weights(data.labels[tr])
        best, best_epoch, best_state, hist = -1.0, 0, None, []
        for epoch in range(1, EPOCHS + 1):
            if epoch - best_epoch > PATIENCE and best_epoch > 0:
                break
            t0 = time.perf_counter()
            model.train()
            head.train()
            order = torch.randperm(len(tr), generator=g)
            for s in range(0, len(order), BATCH):
                idx = order[s:s + BATCH]
                if idx.numel() < 2:
                    continue
                both = geometry(torch.stack([x[idx].float() / 127.5 - 1.0, m[idx] * 2 - 1], 1), aug, g)
                img = augment_rois(both[:, :1].contiguous(), intensity_only, g)
                target = F.adaptive_avg_pool2d((both[:, 1:] > 0).float(), 8)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    logits = model(img.contiguous(memory_format=torch.channels_last))
                    aux = head(feats["l3"])
                loss = F.cross_entropy(logits.float(), y[idx], weight=w)
                if lam > 0:
                    loss = loss + lam * F.binary_cross_entropy_with_logits(aux.float(), target)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            p = predict(model, xv, torch.device("cpu"), tta=False, amp=torch.bfloat16)
            auc = roc_auc_score(yv, p)
            hist.append({"epoch": epoch, "val_auc": auc, "seconds": time.perf_counter() - t0})
            print(f"fold {k} epoch {epoch} auc {auc:.4f} {time.perf_counter() - t0:.1f}s", flush=True)
            if auc > best:
                best, best_epoch, best_state = auc, epoch, {n: t.clone() for n, t in model.state_dict().items()}
        model.load_state_dict(best_state)
        p = predict(model, xv, torch.device("cpu"), tta=True)
        results["folds"].append({"fold": k, "best_epoch": best_epoch, "val_files": [data.files[i] for i in va],
                                 "p_val": p.tolist(), "auc": roc_auc_score(yv, p), "history": hist})
        json.dump(results, open(out, "w"))
    aucs = [f["auc"] for f in results["folds"]]
    yy = np.concatenate([data.labels[va] for _, va in folds])
    pp = np.concatenate([f["p_val"] for f in results["folds"]])
    print(f"lambda {lam}: fold mean {np.mean(aucs):.4f} ± {np.std(aucs, ddof=1):.4f}, "
          f"pooled {roc_auc_score(yy, pp):.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
