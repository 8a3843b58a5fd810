#!/usr/bin/env bash
# One device call: the pipeline's 64-run transformer step with every matrix product as an
# inductor Triton template of one fixed configuration (bias, GELU and casts fused into the
# product's epilogue, nothing timed at compile), against the default step (cuBLAS products,
# separate pointwise kernels). Variants compile side by side and time in turn.
# Usage on the device: OUT=... scripts/gpu_gemm_templates.sh
set -uo pipefail
OUT=${OUT:-gpu_gemm_templates}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
LIMIT=${LIMIT:-420}
SPEC=${SPEC:-"64:bf16:csdkg:2000"}
TEMPLATES="max_autotune_gemm=1,max_autotune_gemm_backends=TRITON"
t0=$(date +%s)
probe() {  # name, inductor options, GEMM configurations, flag suffix, previous variant
  local name=$1 opts=$2 configs=$3 suffix=$4 prev=$5
  IFS=: read -r e p f n <<< "$SPEC"
  GP_INDUCTOR="$opts" GP_MM_CONFIGS="$configs" GP_TOP=40 \
    GP_WAIT_FOR="${prev:+$OUT/$prev.done}" GP_DONE="$OUT/$name.done" \
    TORCHINDUCTOR_CACHE_DIR="/tmp/inductor_$name" timeout "$LIMIT" \
    python3 scripts/gpu_probe.py "$e:$p:$f$suffix:$n" ${6:+"$e:$p:$f${suffix}P"} \
    > "$OUT/probe_$name.log" 2>&1
  echo "rc $?" >> "$OUT/probe_$name.log"
  touch "$OUT/$name.done"
}
probe base "" "" "" "" &
probe t64 "$TEMPLATES" "64,128,64,3,4" "" base profile &
probe t128 "$TEMPLATES" "128,128,64,3,8" "" t64 &
probe t64b "$TEMPLATES" "64,128,64,3,4" "b" t128 &
wait
echo "== $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), $(($(date +%s) - t0)) s =="
for name in base t64 t128 t64b; do
  echo "-- $name: $(tail -n 1 "$OUT/probe_$name.log")"
  grep -E "^\| [0-9]|profile E=|lists built|Error|error:" "$OUT/probe_$name.log" | head -n 8
done
