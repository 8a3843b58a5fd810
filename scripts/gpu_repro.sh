#!/usr/bin/env bash
# One device call: is a GPU training reproducible from process to process, and if not, which
# setting makes it so? Trains one experiment (by default a reduced fraction sweep: 54 runs,
# 3 000 steps, no early stopping, so every training's histories have the same shape) once through `scripts/gpu_pipeline.sh start`, then trains it again REPEATS times
# under each of CONFIGS, each time in a fresh process from no checkpoint, and compares every
# run's history and final weights with the training before it (GP_SET must save the weights:
# `experiments.EXP.options={"save_weights":true}`).
#
# CONFIGS, space-separated, each one of:
#   default   the pipeline's settings
#   jobs1     engine.jobs_per_device: 1 (no job-slot thread and stream of its own)
#   nograph   engine.cuda_graph: false (the compiled step launched from Python every step)
#   eager     engine.compile: false and cuda_graph: false (PyTorch's own kernels)
#   tunelog   the pipeline's settings, with inductor's kernel benchmarking logged: which kernels
#             a process times at their first launch, and which configuration wins
#   cublas    CUBLAS_WORKSPACE_CONFIG=:4096:8 (cuBLAS's documented condition for bit-identical
#             results when more than one stream is active)
# A training under a new config is compared with the last training of the config before it,
# so the first comparison of each config says only whether the setting changes the bits.
#
# Usage on the device: [EXP=fraction_sweep] [REPEATS=3] [CONFIGS="default eager"]
#   scripts/gpu_repro.sh        (GP_SET as in gpu_pipeline.sh: the reduced sweep by default)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
EXP=${EXP:-fraction_sweep}
REPEATS=${REPEATS:-3}
CONFIGS=${CONFIGS:-"default eager"}
W=${GP_WORKDIR:-/root/gp}
export GP_WORKDIR=$W
export GP_SET=${GP_SET-'experiments.fraction_sweep.grid={"data.op":[x+y,x-y],"data.train_fraction":[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9],"seed":[0,1,2]} experiments.fraction_sweep.train.steps=3000 experiments.fraction_sweep.train.early_stop=null experiments.fraction_sweep.options={"save_weights":true}'}
# a pipeline an earlier call left running (`gpu_pipeline.sh start` detaches it) would share the
# GPU and the cores with this one: in the nineteenth session one kept a stuck precompile going
pkill -f "dvc repro" 2>/dev/null
pkill -f "stages\.(precompile|train|analyze)" 2>/dev/null
t0=$SECONDS
GP_ONLY=1 "$here/gpu_pipeline.sh" start "train@$EXP" || exit 1
until grep -q '^EXIT' "$W/pipeline.log" 2>/dev/null; do sleep 5; done
tail -n 1 "$W/pipeline.log"
grep -q '^EXIT 0' "$W/pipeline.log" || { tail -n 30 "$W/pipeline.log"; exit 1; }
echo "first training done at $((SECONDS - t0)) s"
cd "$W" || exit 1
export PYTHONPATH=/tmp/site:$W PYTHONUNBUFFERED=1
cp -r "data/runs/$EXP" /tmp/repro_prev
summary=""
for config in $CONFIGS; do
  git checkout -q params.yaml
  unset CUBLAS_WORKSPACE_CONFIG
  case $config in
  default) ;;
  jobs1) sed -i 's/^  jobs_per_device: auto/  jobs_per_device: 1/' params.yaml ;;
  nograph) sed -i 's/^  cuda_graph: auto/  cuda_graph: false/' params.yaml ;;
  eager) sed -i 's/^  cuda_graph: auto/  cuda_graph: false/; s/^  compile: auto/  compile: false/' params.yaml ;;
  cublas) export CUBLAS_WORKSPACE_CONFIG=:4096:8 ;;
  tunelog) ;;
  *) echo "unknown config $config" >&2; exit 2 ;;
  esac
  for i in $(seq "$REPEATS"); do
    rm -rf "data/checkpoints/$EXP"
    s0=$SECONDS
    if [ "$config" = tunelog ]; then
      python3 -c "
import logging, runpy, sys
logging.basicConfig(format='TUNE %(message)s')
logging.getLogger('torch._inductor.runtime.triton_heuristics').setLevel(logging.DEBUG)
sys.argv = ['stages.train', '$EXP']
runpy.run_module('stages.train', run_name='__main__')
" > "/tmp/repro_${config}_$i.log" 2>&1
    else
      python3 -m stages.train "$EXP" > "/tmp/repro_${config}_$i.log" 2>&1
    fi || { tail -n 20 "/tmp/repro_${config}_$i.log"; exit 1; }
    if [ "$config" = tunelog ]; then  # each benchmarked kernel's winning configuration
      python3 - "/tmp/repro_${config}_$i.log" > "/tmp/repro_winners_$i.txt" <<'PY'
import re, sys
name, best = None, {}
for line in open(sys.argv[1]):
    # the message, whichever handler printed it (torch's own logging may add its prefix)
    line = line.split("TUNE ", 1)[-1].split("] ", 1)[-1]
    m = re.search(r"Benchmark all input configs for (\S+), get:", line)
    if m:
        name = m.group(1)
        continue
    m = re.match(r"(.*): ([0-9.]+), nreg", line)
    if m and name:
        t = float(m.group(2))
        if name not in best or t < best[name][1]:
            best[name] = (m.group(1), t)
for k in sorted(best):
    print(k, "|", best[k][0])
PY
      echo "tunelog #$i: $(wc -l < "/tmp/repro_winners_$i.txt") kernels benchmarked: $(cut -d' ' -f1 "/tmp/repro_winners_$i.txt" | sed 's/_fused.*//' | sort | uniq -c | tr '\n' ' ')"
      if [ "$i" -gt 1 ]; then
        echo "  winners that changed since #$((i - 1)): $(diff "/tmp/repro_winners_$((i - 1)).txt" "/tmp/repro_winners_$i.txt" | grep -c '^>')"
        diff "/tmp/repro_winners_$((i - 1)).txt" "/tmp/repro_winners_$i.txt" | head -n 8
      fi
    fi
    train_s=$(python3 -c "import json; print(round(sum(j['train_s'] for j in json.load(open('data/runs/$EXP/timing.json'))), 1))")
    line="$config #$i ($((SECONDS - s0)) s, training $train_s s): $(python3 - "/tmp/repro_prev" "data/runs/$EXP" <<'PY'
import sys
from pathlib import Path
import pandas as pd, torch
prev, now = map(Path, sys.argv[1:])
a = pd.read_csv(prev / "history.tsv", sep="\t")
b = pd.read_csv(now / "history.tsv", sep="\t")
if a.shape != b.shape:  # runs stopped early at other steps
    what = f"history shapes differ ({len(a)} against {len(b)} rows)"
else:
    cols = [c for c in a.columns if c not in ("run_id", "step")]
    diff = (a[cols] - b[cols]).abs().fillna(0.0)
    # a value against a NaN differs too (its difference is NaN); two NaNs do not
    unequal = (a[cols] != b[cols]) & ~(a[cols].isna() & b[cols].isna())
    rows = unequal.any(axis=1)
    what = f"{int(rows.sum())} of {len(a)} history rows differ"
    if rows.any():
        k = rows.idxmax()
        what += f" (first: {a.run_id[k]} step {a.step[k]}; largest: " + ", ".join(
            f"{c} {diff[c].max():.2g}" if diff[c].max() > 0 else f"{c} NaN"
            for c in cols if unequal[c].any()) + ")"
runs_same = (prev / "runs.tsv").read_bytes() == (now / "runs.tsv").read_bytes()
# the final weights (GP_SET saves them): is training itself the same, or only the evaluations?
weights = sorted((now / "weights").glob("*.pt"))
moved = sum(
    not all(torch.equal(x, y) for x, y in zip(torch.load(f).values(), torch.load(prev / "weights" / f.name).values()))
    for f in weights
)
state = f"final weights of {moved} of {len(weights)} runs differ"
print(f"{what}; runs.tsv {'same' if runs_same else 'DIFFERS'}; {state}")
PY
)"
    echo "$line"
    summary="$summary$line"$'\n'
    rm -rf /tmp/repro_prev && cp -r "data/runs/$EXP" /tmp/repro_prev
  done
done
git checkout -q params.yaml
echo "=== reproducibility of $EXP (each training against the one before it) ==="
printf '%s' "$summary"
