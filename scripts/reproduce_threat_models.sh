#!/usr/bin/env bash
# The threat-model results of the "missing threat models" issue, each resumable (rerun after an interruption):
#   scripts/reproduce_threat_models.sh [corruptions|certify|resnet-table|all]     (default all)
# Outputs in results/threat_models/<part>/<run>/ (results.json/.csv, table.md, *.png). Settings: the narrow
# ResNet-18 at K=1, eps=1e-3 (the setting matching the paper's clean accuracy), lam 0.9 (the paper's row) against
# lam 1 (the original model); the MNIST models at K=3, eps=1e-3 (the library default), lam 0.8 against lam 1.
# Sample counts are chosen to fit a 2-core CPU and are stated in each table.md.
set -euo pipefail
cd "$(dirname "$0")/.."
NRPM=${NRPM:-.venv/bin/nrpm}
OUT=results/threat_models
what=${1:-all}
RESNET="--model resnet18_narrow --K 1 --eps 1e-3 --threads 1 --no-progress"

corruptions() {
  # Hendrycks & Dietterich's CIFAR-10-C corruptions in torch, severities 1-5 (snow, frost, fog need texture files)
  for kind in gaussian_blur defocus_blur impulse_noise shot_noise gaussian_noise contrast brightness; do
    $NRPM eval $RESNET --lam 1 0.9 --attack corruption --attack-arg kind=$kind --budgets 0 1 2 3 4 5 \
      --n-samples 500 --batch-size 250 --out $OUT/corruptions/$kind
  done
}

certify() {
  # randomized smoothing (Cohen et al.): n0 = 100, n = 1000, alpha = 0.001 (the paper's n = 100000 does not fit a CPU)
  for model in mlp3 lenet; do
    $NRPM certify --model $model --lam 1 0.8 --K 3 --eps 1e-3 --sigma 0.25 0.5 --n0 100 --n 1000 \
      --n-samples 100 --threads 1 --no-progress --out $OUT/certify/$model
  done
  $NRPM certify $RESNET --lam 1 0.9 --sigma 0.25 0.5 --n0 100 --n 1000 --n-samples 50 --out $OUT/certify/resnet18_narrow
}

resnet_table() {
  # the paper's ResNet table columns at 8/255 on the first 100 test images
  local pgd="--attack-arg steps=20 --attack-arg alpha=2"
  for row in "original|--lam 1" "p1_lam0.9|--lam 0.9" \
             "p2|--reprogramming results/paradigm23/resnet18_narrow_p2/reprogramming.pt" \
             "p3|--checkpoint results/paradigm23/resnet18_narrow_p3/model.pt"; do
    name=${row%%|*}; args=${row#*|}
    local common="--model resnet18_narrow --threads 1 --no-progress --n-samples 100 --batch-size 100"
    [ "$name" = original ] || [ "$name" = p1_lam0.9 ] && common="$common --K 1 --eps 1e-3"
    $NRPM eval $common $args --attack pgd $pgd --budgets 0 8 --budget-unit 255 --out $OUT/resnet_table/$name/pgd20
    $NRPM eval $common $args --attack fgsm --budgets 8 --budget-unit 255 --out $OUT/resnet_table/$name/fgsm
    $NRPM eval $common $args --attack cw $pgd --budgets 8 --budget-unit 255 --out $OUT/resnet_table/$name/cw
    # L2 attacks: the usual CIFAR-10 L2 budget 0.5
    $NRPM eval $common $args --attack deepfool --budgets 0.5 --out $OUT/resnet_table/$name/deepfool_l2
    $NRPM eval $common $args --attack spsa --attack-arg steps=50 --attack-arg samples=64 --budgets 8 \
      --budget-unit 255 --out $OUT/resnet_table/$name/spsa
    # AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square 5000) on the same 100 images
    $NRPM eval $common $args --attack autoattack --budgets 8 --budget-unit 255 --out $OUT/resnet_table/$name/autoattack
  done
}

case $what in
  corruptions) corruptions ;;
  certify) certify ;;
  resnet-table) resnet_table ;;
  all) corruptions; certify; resnet_table ;;
  *) echo "usage: $0 [corruptions|certify|resnet-table|all]" >&2; exit 2 ;;
esac
