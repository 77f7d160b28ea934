"""Exploration: LiteMedSAM embedding pooled over lesion masks (truth + OOF automatic top-1)."""
import json, sys
from pathlib import Path
import numpy as np, torch
import torch.nn.functional as F
from branet_pacs.models.runtime import configure_torch
from branet_pacs.models.segmenter import LiteMedSAMSegmenter
from branet_pacs.train.detector import iter_busi, iter_mias
configure_torch(1)
data, shard, nshard, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
auto = {json.loads(l)["name"]: json.loads(l) for f in (("var/exp/usj25-0.jsonl", "var/exp/usj25-1.jsonl") if data == "busi" else ("var/exp/mg0.jsonl",)) for l in open(f)}
seg = LiteMedSAMSegmenter("cpu")
cases = [c for c in (iter_busi if data == "busi" else iter_mias)(Path("../shared/data") / data)
         if c.category != "normal"][shard::nshard]
def pool(emb, mask):
    nh, nw = emb.resized_size
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    m = F.interpolate(m, size=(nh, nw), mode="area")
    m = F.pad(m, (0, 256 - nw, 0, 256 - nh))
    m = F.interpolate(m, size=(64, 64), mode="area")[0, 0]
    f = emb.features[0]
    w = m / m.sum().clamp(min=1e-6)
    inside = (f * w).sum((1, 2))
    ys, xs = np.nonzero(mask); h, wid = mask.shape
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    dy, dx = (y1 - y0) // 2, (x1 - x0) // 2
    ring = np.zeros_like(mask); ring[max(0, y0 - dy):y1 + dy, max(0, x0 - dx):x1 + dx] = True; ring &= ~mask
    if ring.sum() == 0: ring = ~mask
    r = torch.from_numpy(ring.astype(np.float32))[None, None]
    r = F.pad(F.interpolate(r, size=(nh, nw), mode="area"), (0, 256 - nw, 0, 256 - nh))
    r = F.interpolate(r, size=(64, 64), mode="area")[0, 0]
    around = (f * r / r.sum().clamp(min=1e-6)).sum((1, 2))
    return torch.cat([inside, around]).numpy().round(5).tolist()
with open(out, "w") as fh:
    for i, c in enumerate(cases):
        emb = seg.embed(c.image.astype(np.float32))
        rec = {"name": c.name, "category": c.category, "truth": [pool(emb, m) for m in c.lesions if m.any()]}
        fs = auto[c.name]["findings"]
        if fs:
            mask = seg.decode(emb, [tuple(fs[0]["pbox"])])[0]
            if not mask.any():
                x0, y0, x1, y1 = fs[0]["pbox"]; mask = np.zeros(c.image.shape, bool); mask[y0:y1, x0:x1] = True
            rec["auto"] = pool(emb, mask)
        fh.write(json.dumps(rec) + "\n"); fh.flush()
        print(i, len(cases), flush=True)
