#!/usr/bin/env bash
# The transformers study of results/transformers/ on the released vit_tiny_cifar, on both cores of a 2-core
# machine (about an hour): two chains of resumable steps side by side, one thread each.
#   A: scripts/transformers_study.py: lam chosen on the last 200 training images (lams 1 0.9 0.8 0.7 0.5, PGD-10 at
#      2, 4, 8/255, K 1), the chosen settings and the plain ViT on the first 500 test images, paradigm 2 (lam learnt
#      per layer, 2 epochs of 2560 images), audits of the plain ViT and of each chosen setting.
#   B: beyond the rule, the setting with the largest held-out gain (robust projections + attention at lam 0.5) on
#      the 500 test images and through the audit, then the paradigm-2 result through the audit (once A made it).
# Audits: 100 test images, a reduced protocol (PGD-10, APGD-10, Square 100 queries; no AutoAttack, C&W, SPSA or
# smoothed IRLS: their CPU time), said so in each verdict. Rerun to resume; each step skips what it finished.
# OUT (default results/transformers) must not hold another model's study: its steps would be skipped as done.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
PY=.venv/bin/python
NRPM=.venv/bin/nrpm
OUT=${OUT:-results/transformers}
CKPT=src/nrpm/models/released/vit_tiny_cifar.pt
PROTOCOL=(--steps 10 --apgd-steps 10 --square-queries 100 --no-autoattack
          --skip-attacks cw spsa smoothed-eps10 smoothed-eps100 smoothed-k1)
LOGS=${LOGS:-runs}

chain_a() {
  $PY scripts/transformers_study.py --checkpoint $CKPT --out "$OUT" --lams 1 0.9 0.8 0.7 0.5 --budgets 0 2 4 8 \
    --choice-budget 4 --K 1 --steps 10 --val-n 200 --test-n 500 --p2-epochs 2 --p2-subset 2560 --audit-n 100 \
    --audit-args "${PROTOCOL[*]}" --threads 1
}

audit() {  # folder, then the model's arguments; exit status 1 (a failing check) is a finished audit
  local folder=$1; shift
  [[ -f $folder/audit.json ]] && return 0
  $NRPM audit --model vit_tiny_cifar --checkpoint $CKPT "$@" --n-samples 100 "${PROTOCOL[@]}" --threads 1 \
    --no-progress --out "$folder" || [[ $? == 1 ]]
}

chain_b() {
  local ex=$OUT/exploratory_both_lam0.5 model=(--layer-types linear attention --K 1 --lam 0.5)
  [[ -f $ex/test/results.json ]] || $NRPM eval --model vit_tiny_cifar --checkpoint $CKPT "${model[@]}" \
    --attack pgd --attack-arg steps=10 --budgets 0 2 4 8 --budget-unit 255 --batch-size 100 --n-samples 500 \
    --threads 1 --no-progress --out $ex/test
  audit $ex/audit "${model[@]}" --budgets 2 4 8 --budget-unit 255
  until [[ -f $OUT/paradigm2/.done ]]; do  # chain A's paradigm-2 step
    kill -0 "$A" 2>/dev/null || { echo "chain A ended without paradigm 2: see its log"; return 1; }
    sleep 30
  done
  audit $OUT/audit/paradigm2 --reprogramming $OUT/paradigm2/reprogramming.pt --budgets 2 4 8 --budget-unit 255
}

mkdir -p "$OUT" "$LOGS"
chain_a > "$LOGS/transformers_chain_a.log" 2>&1 &
A=$!
chain_b > "$LOGS/transformers_chain_b.log" 2>&1
wait $A
$PY scripts/transformers_study.py --checkpoint $CKPT --out "$OUT" --report-only
