#!/usr/bin/env bash
# One device call's worth of GPU checks, results under $OUT (default ./gpu_checks), the short
# summary printed last so that it survives a cut-off output tail:
#   1. tests/test_engine_cuda.py (compiled + CUDA-graph step against eager and CPU; a saved
#      step loaded by a new process; ~190 s on an H100 with cold compiles);
#   2. the engine bench (`python -m grokpipe.bench`; BENCH_ARGS replaces its arguments).
# Usage on the device: scripts/gpu_checks.sh   (with .whl carried, for pytest and dvc)
set -uo pipefail
OUT=${OUT:-gpu_checks}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
# shellcheck source=scripts/gpu_site.sh
source "$(dirname "$0")/gpu_site.sh"
install_wheels pytest
t0=$(date +%s)
timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -p no:cacheprovider tests/test_engine_cuda.py \
  > "$OUT/cuda_tests.log" 2>&1
tests_rc=$?
t1=$(date +%s)
# shellcheck disable=SC2086
timeout "${BENCH_TIMEOUT:-300}" python3 -m grokpipe.bench \
  ${BENCH_ARGS:---precision bf16 --sizes 64 --skip grok --steps 3000} --out "$OUT/bench.json" \
  > "$OUT/bench.log" 2>&1
bench_rc=$?
t2=$(date +%s)
echo "== gpu checks: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true) =="
echo "cuda tests: rc $tests_rc in $((t1 - t0)) s: $(tail -n 1 "$OUT/cuda_tests.log")"
echo "bench: rc $bench_rc in $((t2 - t1)) s ($OUT/bench.json keeps every finished part)"
grep -E "^(reference|engine x)" "$OUT/bench.log" | cut -c1-160
