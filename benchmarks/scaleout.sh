#!/usr/bin/env bash
# Wall time of one quick narrow-ResNet-18 audit on 1 and on 2 processes (torchrun, gloo, --threads 1 each), and
# whether the two give the same audit. Writes results/bench_scaleout.md (+ .json).
#   benchmarks/scaleout.sh [N_SAMPLES]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-40}
OUT=$(mktemp -d)
AUDIT=(audit --model resnet18_narrow --lam 0.9 --K 1 --budgets 8 16 --budget-unit 255 --n-samples "$N"
       --no-autoattack --steps 5 --restarts 1 --apgd-steps 10 --square-queries 100 --skip-attacks cw spsa
       --threads 1 --no-progress)
export OMP_NUM_THREADS=1
run() {  # run NPROC FOLDER: prints the wall seconds
  local start end
  start=$(date +%s.%N)
  if [[ $1 == 1 ]]; then
    .venv/bin/python -m nrpm.cli "${AUDIT[@]}" --out "$2" > "$2.log" 2>&1 || [[ $? == 1 ]]
  else
    .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node="$1" -m nrpm.cli "${AUDIT[@]}" \
      --out "$2" > "$2.log" 2>&1 || [[ $? == 1 ]]
  fi
  end=$(date +%s.%N)
  python3 -c "print(round($end - $start, 1))"
}
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
T1=$(run 1 "$OUT/one")
T2=$(run 2 "$OUT/two")
SAME=$(.venv/bin/python - "$OUT" <<'PY'
import json, sys
a, b = (json.load(open(f"{sys.argv[1]}/{n}/audit.json")) for n in ("one", "two"))
same = [k for k in ("verdict", "worst_case", "checks") if a[k] == b[k]]
cells = lambda r: {(c["model"], c["label"], c["budget"]): c["correct"] for c in r["cells"]}
ca, cb = cells(a), cells(b)
differ = [f"{m} {label} at {budget:g}: {ca[k]} vs {cb[k]} of {a['cells'][0]['n']}"
          for k in ca if k in cb and ca[k] != cb[k] for m, label, budget in [k]]
print(f"{'same' if len(same) == 3 else 'differ'}: equal {same}; cells that differ (1 vs 2 processes): "
      + ("; ".join(differ) or "none"))
PY
)
.venv/bin/python - "$N" "$T1" "$T2" "$SAME" "$LOAD_BEFORE" <<'PY'
import json, os, sys, torch
n, t1, t2, same, load = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
info = {"n_samples": int(n), "seconds_1_process": t1, "seconds_2_processes": t2, "speedup": round(t1 / t2, 2),
        "comparison": same, "cpus": os.cpu_count(), "torch": torch.__version__,
        "load_average_before": load}
json.dump(info, open("results/bench_scaleout.json", "w"), indent=2)
open("results/bench_scaleout.md", "w").write(f"""# Scale-out: a quick narrow-ResNet-18 audit on 1 and 2 processes

Command: `benchmarks/scaleout.sh {n}` (nrpm audit resnet18_narrow, lam 0.9, K 1, budgets 8 and 16/255, {n} test
images, no AutoAttack, PGD-5, APGD-10, Square 100 queries, no C&W or SPSA; --threads 1 per process, gloo).

| processes | wall time (s) | speedup |
|---|---|---|
| 1 | {t1:.1f} | 1.00 |
| 2 | {t2:.1f} | {t1 / t2:.2f} |

1 against 2 processes: {same}. Every attack nrpm seeds per sample gives the same per-sample results on any
number of processes; pyautoattack's APGD and Square seed per batch, and the ranks take one process's batches whole, so
they match too.
Machine: {os.cpu_count()} CPUs, load average
{load} before the runs (other jobs were running: the times include that contention). Each process repeats the
cheap shared work (loading, the forward and gradient probes, the clean pass) and splits every attack cell; on P
GPUs the attack cells, which are nearly all of the time, divide by P, so expect close to P-fold on a full audit
until each rank's shard is smaller than one batch.
""")
print(open("results/bench_scaleout.md").read())
PY
rm -rf "$OUT"
