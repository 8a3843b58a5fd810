#!/usr/bin/env bash
# One device call: the CUDA tests, then inductor variants of the arithmetic step timed in turn
# (each compiles beside the others, on its own cores; timing waits for the one before).
# Variants: default, coordinate-descent tuning, combo kernels, max-autotune GEMMs.
# Usage on the device: OUT=... scripts/gpu_variants.sh   (with .whl carried, for pytest)
set -uo pipefail
OUT=${OUT:-gpu_variants}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
# shellcheck source=scripts/gpu_site.sh
source "$(dirname "$0")/gpu_site.sh"
install_wheels pytest
LIMIT=${LIMIT:-520}
SIZES=${SIZES:-"6:bf16:csd:5000 51:bf16:csd:3000 189:bf16:csd:1000"}
t0=$(date +%s)
( timeout "$LIMIT" python3 -m pytest -q -p no:cacheprovider tests/test_engine_cuda.py \
    > "$OUT/cuda_tests.log" 2>&1; echo "rc $?" >> "$OUT/cuda_tests.log"; touch "$OUT/tests.done" ) &
probe() {  # name, inductor options, flag suffix, extra specs
  local name=$1 opts=$2 suffix=$3 extra=$4 prev=$5
  local specs=""
  for s in $SIZES; do
    IFS=: read -r e p f n <<< "$s"
    specs="$specs $e:$p:$f$suffix:$n"
  done
  # shellcheck disable=SC2086
  GP_INDUCTOR="$opts" GP_WAIT_FOR="$OUT/$prev.done" GP_DONE="$OUT/$name.done" \
    TORCHINDUCTOR_CACHE_DIR="/tmp/inductor_$name" timeout "$LIMIT" \
    python3 scripts/gpu_probe.py $specs $extra > "$OUT/probe_$name.log" 2>&1
  touch "$OUT/$name.done"
}
probe default "" "" "6:bf16:csdP 51:bf16:csdP" tests &
probe coord "coordinate_descent_tuning=1" "" "" default &
probe combo "" "k" "" coord &
probe autotune "max_autotune_gemm=1" "" "" combo &
wait
echo "== $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), $(($(date +%s) - t0)) s =="
echo "cuda tests: $(tail -n 2 "$OUT/cuda_tests.log" | tr '\n' ' ')"
for name in default coord combo autotune; do
  echo "-- $name: $(grep -c 'prepare' "$OUT/probe_$name.log") prepared"
  grep -E "^\| [0-9]|profile E=" "$OUT/probe_$name.log"
done
