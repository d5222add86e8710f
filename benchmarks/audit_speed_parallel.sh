#!/usr/bin/env bash
# Old vs new `nrpm audit`, full LeNet protocol on 100 images, both audits at the same time (one thread each, so
# both see the same machine), each timed by /usr/bin/time (CPU seconds: user + system); then audit_speed.py
# compares them (it skips the audits, whose audit.json exists, and takes the CPU seconds measured here).
#   git worktree add --detach /tmp/oldcode e98b10c     # the code before the Audit-speed issue
#   benchmarks/audit_speed_parallel.sh /tmp/oldcode/src WORK OUT   # e.g. /tmp/speed2 results/audit_speed
set -euo pipefail
cd "$(dirname "$0")/.."
OLD_SRC=$1 WORK=$2 OUT=$3
ARGS=(--model lenet --lam 0.8 --K 1 --budgets 0.1 0.2 0.3 --n-samples 100 --threads 1 --no-progress)
export NRPM_DATA=${NRPM_DATA:-../shared/data} NRPM_PRETRAINED=${NRPM_PRETRAINED:-../shared/pretrained}
export OMP_NUM_THREADS=1
mkdir -p "$WORK"
for name in old new; do
  src=$PWD/src; [[ $name == old ]] && src=$OLD_SRC
  [[ -f $WORK/$name/audit.json ]] && continue
  PYTHONPATH=$src /usr/bin/time -f "%U %S %e" -o "$WORK/time_$name.txt" \
    .venv/bin/python -m nrpm.cli audit "${ARGS[@]}" --out "$WORK/$name" > "$WORK/$name.log" 2>&1 &
done
wait
cpu() { awk '{print $1 + $2}' "$WORK/time_$1.txt"; }
.venv/bin/python benchmarks/audit_speed.py --old-src "$OLD_SRC" --new-src src --work "$WORK" --out "$OUT" \
  --cpu-seconds "$(cpu old)" "$(cpu new)" --concurrent -- "${ARGS[@]}"
