"""Table + plot of FID/KID per checkpoint from the JSON files `branet sngan score --json` wrote.

    python research/sngan/plot_scores.py /tmp/sngan-exp/scores PREFIX docs/sngan/fid_kid_PREFIX.png
"""
import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv: list[str]) -> None:
    folder, prefix, out = Path(argv[0]), argv[1], Path(argv[2])
    rows = []
    for path in sorted(folder.glob(f"{prefix}_epoch_*.json")):
        epoch = int(re.search(r"epoch_(\d+)", path.name).group(1))
        rows.append((epoch, json.loads(path.read_text())))
    rows.sort()
    name = rows[0][1]["extractor"]
    print(f"| epoch | FID[{name}] | KID[{name}] | n real / fake |")
    print("|---:|---:|---:|---:|")
    for epoch, r in rows:
        spread = f" ± {r['kid_std']:.4f}" if r["kid_std"] > 1e-9 else ""  # subsets as large as the sets: no spread
        print(f"| {epoch} | {r['fid']:.2f} | {r['kid_mean']:.4f}{spread} | {r['n_real']} / {r['n_fake']} |")
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = [e for e, _ in rows]
    ax[0].plot(epochs, [r["fid"] for _, r in rows], "o-")
    ax[0].set_title(f"FID[{name}]")
    ax[1].errorbar(epochs, [r["kid_mean"] for _, r in rows], yerr=[r["kid_std"] for _, r in rows], fmt="o-", capsize=3)
    ax[1].set_title(f"KID[{name}]")
    for a in ax:
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    main(sys.argv[1:])
