#!/bin/bash
# Per-checkpoint scoring: generate N per class with `branet sngan generate`, score with `branet sngan score`.
# WEIGHTS=raw (default: raw generator from the .pt checkpoint) or WEIGHTS=ema (refresh_ema.py exports)
# usage: score_ckpts.sh FEATURES MAXIMG EPOCH...   (fakes: as many per class as the real training split has)
set -e
cd "$(dirname "$0")/../.."
FEAT=$1; MAXIMG=$2; shift 2
TAG=$(echo "$FEAT" | tr ':/' '__' | tail -c 40)
for E in "$@"; do
  EP=$(printf "%04d" "$E")
  OUT=/tmp/sngan-exp/fakes/${WEIGHTS:-raw}/epoch_$EP
  for L in benign malignant; do
    N=$(ls /tmp/sngan-split/train/$L | wc -l)
    [ -d "$OUT/$L" ] && [ "$(ls $OUT/$L | wc -l)" -ge "$N" ] || \
      nice -n 15 .venv/bin/branet sngan generate $( [ "${WEIGHTS:-raw}" = ema ] && echo --checkpoint /tmp/sngan-exp/us-run/ema-refreshed/epoch_$EP.safetensors || echo --checkpoint /tmp/sngan-exp/us-run/checkpoints/epoch_$EP.pt --weights raw) \
        --n "$N" --label $L --out "$OUT/$L" --seed 123 --threads 1
  done
  nice -n 15 .venv/bin/branet sngan score --real /tmp/sngan-split/train --fake "$OUT" --features "$FEAT" \
    ${MAXIMG:+--max-images $MAXIMG} --cache /tmp/sngan-exp/feature-cache --threads 1 --device cpu \
    --json /tmp/sngan-exp/scores/${TAG}_${WEIGHTS:-raw}_epoch_$EP.json
done
