#!/usr/bin/env bash
# The CIFAR-10 ViT of the registry (vit_tiny_cifar): trained from scratch with `nrpm train`, augmentation as the
# ResNet's (random crop pad 4 + flip, on by default for CIFAR-10), AdamW with cosine decay; the last 1000
# training images are held out (the per-epoch check, and later the lam choice). Resumable: rerun the same
# command after an interruption (it resumes from OUT/checkpoint.pt).
#   scripts/train_vit.sh [OUT] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/vit_tiny_cifar}
THREADS=${2:-1}
RESUME=()
[[ -f "$OUT/checkpoint.pt" ]] && RESUME=(--resume)
exec .venv/bin/nrpm train --model vit_tiny_cifar --data cifar10 --out "$OUT" \
  --epochs 50 --batch-size 128 --optimizer adamw --lr 1e-3 --weight-decay 0.05 --schedule cosine \
  --val-size 1000 --seed 0 --threads "$THREADS" --no-progress "${RESUME[@]}"
