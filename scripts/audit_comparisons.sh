#!/usr/bin/env bash
# results/audit/COMPARE.md: the narrow ResNet-18's NRPM worst cases against the plain model's, sample by sample on
# the same images (`nrpm audit-compare`: paired 95% interval and exact McNemar p). The 100-image re-audit, then
# every finished 500-image audit of scripts/resnet_audits_n500.sh against the plain rows of p1's folder (the others
# ran --no-plain); an unfinished one is listed as such. Reads JSON only: seconds.   scripts/audit_comparisons.sh
set -euo pipefail
cd "$(dirname "$0")/.."
NRPM=${NRPM:-.venv/bin/nrpm}
A=results/audit
OUT=$A/COMPARE.md
PLAIN=$A/resnet18_narrow_p1_lam0.9_K1_n500:plain
tmp=$(mktemp "$OUT.XXXXXX")
trap 'rm -f "$tmp"' EXIT
{
  echo "# Is the gain real? NRPM against the plain model, sample by sample"
  echo
  echo "Written by \`scripts/audit_comparisons.sh\` (\`nrpm audit-compare\` on the committed audit folders)."
  echo
  $NRPM audit-compare $A/resnet18_narrow_p1_lam0.9_K1_n100_reaudit | sed 's/^# /## /'
  for run in p1_lam0.9_K1 mcp_gamma2_relative_lam0.9_K1 huber_delta1_relative_lam0.9_K1 p2 p3; do
    folder=$A/resnet18_narrow_${run}_n500
    echo
    if [ -f "$folder/audit.json" ] && [ -f "$A/resnet18_narrow_p1_lam0.9_K1_n500/audit.json" ]; then
      $NRPM audit-compare "$folder" "$PLAIN" | sed 's/^# /## /'
    else
      echo "## $(basename "$folder"): not finished (rerun scripts/resnet_audits_n500.sh)"
    fi
  done
} > "$tmp"
mv "$tmp" "$OUT"
trap - EXIT
echo "wrote $OUT"
