#!/usr/bin/env bash
# The narrow ResNet-18 audits on the first 500 CIFAR-10 test images, at the full protocol of the committed
# 100-image re-audit (PGD-20 step 2/255, APGD 100, Square 1000, SPSA 20 x 32, C&W, smoothed IRLS, AutoAttack;
# budgets 8, 16, 32 /255); the plain model's rows (the issue's "plain" audit) are p1's: every other audit here has
# the same plain model (the paper's checkpoint), images and attacks, so it runs --no-plain rather than repeat them
# (~45 min of CPU each):
#   p1  lam 0.9, K 1, eps 1e-3 (the paper's row; also the estimator study's L1 choice)
#   mcp, huber  the estimator study's other chosen settings (results/estimators/resnet18_narrow/chosen.json)
#   p2, p3  the paradigm-2 / paradigm-3 models of results/paradigm23/
# Every folder is resumable down to the batch (cache.json keeps each finished batch of a cell in progress): rerun
# after an interruption, in any later session.        scripts/resnet_audits_n500.sh [p1|mcp|huber|p2|p3|all]...
# Hours of CPU each on this 2-core machine; THREADS (default 1) per audit. Two chains, one per core, get more done
# than one with two threads:  scripts/resnet_audits_n500.sh p1 huber p3 &  scripts/resnet_audits_n500.sh mcp p2 &
set -euo pipefail
cd "$(dirname "$0")/.."
NRPM=${NRPM:-.venv/bin/nrpm}
A=results/audit
COMMON=(--budgets 8 16 32 --budget-unit 255 --steps 20 --alpha 2 --n-samples 500 --square-queries 1000
        --batch-size 100 --spsa-steps 20 --spsa-samples 32 --threads "${THREADS:-1}" --no-progress)
audit() {  # folder, then the model's arguments
  local out=$A/$1; shift
  # exit status 1 is an audit that found a failing check (a result, not an error): go on to the next folder
  $NRPM audit "$@" "${COMMON[@]}" --out "$out" > /dev/null || [ $? -eq 1 ]
}
P=results/paradigm23
p1() { audit resnet18_narrow_p1_lam0.9_K1_n500 --model resnet18_narrow --lam 0.9 --K 1 --eps 1e-3; }
mcp() { audit resnet18_narrow_mcp_gamma2_relative_lam0.9_K1_n500 --model resnet18_narrow --lam 0.9 --K 1 --eps 1e-3 \
          --estimator mcp --gamma 2 --scale relative --no-plain; }
huber() { audit resnet18_narrow_huber_delta1_relative_lam0.9_K1_n500 --model resnet18_narrow --lam 0.9 --K 1 \
            --eps 1e-3 --estimator huber --delta 1 --scale relative --no-plain; }
p2() { audit resnet18_narrow_p2_n500 --model resnet18_narrow --reprogramming $P/resnet18_narrow_p2/reprogramming.pt \
         --no-plain; }
p3() { audit resnet18_narrow_p3_n500 --model resnet18_narrow --checkpoint $P/resnet18_narrow_p3/model.pt \
         --reprogramming $P/resnet18_narrow_p3/reprogramming.pt --no-plain; }
for target in "${@:-all}"; do
  case $target in
    p1|mcp|huber|p2|p3) "$target" ;;
    all) p1; mcp; huber; p2; p3 ;;
    *) echo "usage: $0 [p1|mcp|huber|p2|p3|all]..." >&2; exit 2 ;;
  esac
done
