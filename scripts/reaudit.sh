#!/usr/bin/env bash
# Re-audit the committed audit folders with the attacks the Threat-models issue added (C&W-margin PGD, SPSA, PGD
# through a smoothed estimator: eps x10, eps x100, K = 1). Each run starts from a copy of the folder's cache.json
# into <folder>_reaudit, so only the new cells run; the command is the folder's own (results/audit/README.md).
#   scripts/reaudit.sh [resnet|mnist|all]        (resumable: rerun after an interruption)
# The ResNet re-audit runs SPSA at 20 steps x 32 samples (the default 50 x 64 costs ~1 h per budget here);
# the MNIST ones at the default 50 x 64.
set -euo pipefail
cd "$(dirname "$0")/.."
NRPM=${NRPM:-.venv/bin/nrpm}
A=results/audit
COMMON="--threads 1 --no-progress"
reaudit() {  # folder, then the folder's own audit arguments
  local folder=$1; shift
  local out=$A/${folder}_reaudit
  if [ ! -e "$out/cache.json" ]; then mkdir -p "$out" && cp "$A/$folder/cache.json" "$out/cache.json"; fi
  # exit status 1 is an audit that found a failing check (a result, not an error): go on to the next folder
  $NRPM audit "$@" $COMMON --out "$out" || [ $? -eq 1 ]
}
resnet() {
  reaudit resnet18_narrow_p1_lam0.9_K1_n100 --model resnet18_narrow --lam 0.9 --K 1 --eps 1e-3 --budgets 8 16 32 \
    --budget-unit 255 --steps 20 --alpha 2 --n-samples 100 --square-queries 1000 --batch-size 100 \
    --spsa-steps 20 --spsa-samples 32
}
mnist() {
  reaudit lenet_p1_lam0.8_K1_n100 --model lenet --lam 0.8 --K 1 --budgets 0.1 0.2 0.3 --n-samples 100
  reaudit lenet_p2_n100 --model lenet --reprogramming results/paradigm23/lenet_p2/reprogramming.pt \
    --budgets 0.1 0.2 0.3 --n-samples 100
  reaudit lenet_p3_n100 --model lenet --checkpoint results/paradigm23/lenet_p3/model.pt \
    --reprogramming results/paradigm23/lenet_p3/reprogramming.pt --plain-checkpoint pretrained \
    --budgets 0.1 0.2 0.3 --n-samples 100
  reaudit mlp3_p1_lam0.5_K1_eps5e-5_n500 --model mlp3 --lam 0.5 --K 1 --eps 5e-5 --budgets 0.1 0.2 0.3 --n-samples 500
  reaudit mlp3_p2_n500 --model mlp3 --reprogramming results/paradigm23/mlp3_p2/reprogramming.pt \
    --budgets 0.1 0.2 0.3 --n-samples 500
  reaudit mlp3_p3_n500 --model mlp3 --checkpoint results/paradigm23/mlp3_p3/model.pt \
    --reprogramming results/paradigm23/mlp3_p3/reprogramming.pt --plain-checkpoint pretrained \
    --budgets 0.1 0.2 0.3 --n-samples 500
}
case ${1:-all} in
  resnet) resnet ;;
  mnist) mnist ;;
  all) resnet; mnist ;;
  *) echo "usage: $0 [resnet|mnist|all]" >&2; exit 2 ;;
esac
