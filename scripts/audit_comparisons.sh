#!/usr/bin/env bash
# results/audit/COMPARE.md: the narrow ResNet-18's NRPM worst cases against the plain model's, sample by sample on
# the same images (`nrpm audit-compare`: paired 95% interval and exact McNemar p). The 100-image re-audit, then
# every finished 500-image audit of scripts/resnet_audits_n500.sh against the plain rows of p1's folder (the others
# ran --no-plain), the MCP / Huber choices and paradigms 2 / 3 against L1 (p1); an unfinished one is listed as such. Reads JSON only: seconds.   scripts/audit_comparisons.sh
set -euo pipefail
cd "$(dirname "$0")/.."
NRPM=${NRPM:-.venv/bin/nrpm}
A=results/audit
OUT=$A/COMPARE.md
P1=$A/resnet18_narrow_p1_lam0.9_K1_n500
tmp=$(mktemp "$OUT.XXXXXX")
trap 'rm -f "$tmp"' EXIT
compare() {  # run (a folder name's middle), the other side: a section, or a line saying it is not finished
  local folder=$A/resnet18_narrow_${1}_n500
  echo
  if [ -f "$folder/audit.json" ] && [ -f "$P1/audit.json" ]; then
    $NRPM audit-compare "$folder" "$2" | sed 's/^# /## /'
  else
    echo "## $(basename "$folder") against $(basename "$2"): not finished (rerun scripts/resnet_audits_n500.sh)"
  fi
}
{
  echo "# Is the gain real? NRPM against the plain model, sample by sample"
  echo
  echo "Written by \`scripts/audit_comparisons.sh\` (\`nrpm audit-compare\` on the committed audit folders)."
  echo
  $NRPM audit-compare $A/resnet18_narrow_p1_lam0.9_K1_n100_reaudit | sed 's/^# /## /'
  for run in p1_lam0.9_K1 mcp_gamma2_relative_lam0.9_K1 huber_delta1_relative_lam0.9_K1 p2 p3; do
    compare "$run" "$P1:plain"
  done
  echo
  echo "# The estimator study's choices against the paper's L1 (the same 500 images, lam 0.9, K 1)"
  for run in mcp_gamma2_relative_lam0.9_K1 huber_delta1_relative_lam0.9_K1; do
    compare "$run" "$P1"
  done
  echo
  echo "# Paradigms 2 (lam learned) and 3 (weights and lam learned) against paradigm 1 (lam 0.9 by hand), same images"
  for run in p2 p3; do
    compare "$run" "$P1"
  done
} > "$tmp"
mv "$tmp" "$OUT"
trap - EXIT
echo "wrote $OUT"
