#!/usr/bin/env bash
# One device call's worth of GPU checks, results under $OUT (default ./gpu_checks), the short
# summary printed last so that it survives a cut-off output tail:
#   1. tests/test_engine_cuda.py (compiled + CUDA-graph step against eager and CPU; a saved
#      step loaded by a new process; ~450 s on an H100 with cold compiles, one after another);
#      TEST_JOBS=N runs the tests N at a time, each in its own process: they are bound by
#      compiling on the CPU, which has cores to spare;
#   2. the engine bench (`python -m grokpipe.bench`; BENCH_ARGS replaces its arguments;
#      BENCH=0 leaves it out).
# Usage on the device: scripts/gpu_checks.sh   (with .whl carried, for pytest and dvc)
set -uo pipefail
OUT=${OUT:-gpu_checks}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
# shellcheck source=scripts/gpu_site.sh
source "$(dirname "$0")/gpu_site.sh"
install_wheels pytest
t0=$(date +%s)
TESTS=tests/test_engine_cuda.py
if [ "${TEST_JOBS:-1}" -gt 1 ]; then
  # one process per test, TEST_JOBS at a time; each test's log is cuda_test_<n>.log
  python3 -m pytest -q --collect-only -p no:cacheprovider "$TESTS" | grep '::' > "$OUT/tests.txt"
  export OUT TEST_TIMEOUT=${TEST_TIMEOUT:-300}
  nl -ba -w1 -s' ' "$OUT/tests.txt" | xargs -d '\n' -P "$TEST_JOBS" -I{} bash -c '
    n=${1%% *} node=${1#* }
    timeout "$TEST_TIMEOUT" python3 -m pytest -q -p no:cacheprovider "$node" \
      > "$OUT/cuda_test_$n.log" 2>&1
    echo "$node: rc $? $(tail -n 1 "$OUT/cuda_test_$n.log")" > "$OUT/cuda_test_$n.rc"' _ {}
  cat "$OUT"/cuda_test_*.rc > "$OUT/cuda_tests.log"
  tests_rc=$(grep -vc ": rc 0 " "$OUT/cuda_tests.log")
else
  timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -p no:cacheprovider "$TESTS" \
    > "$OUT/cuda_tests.log" 2>&1
  tests_rc=$?
fi
t1=$(date +%s)
bench_rc=skipped
if [ "${BENCH:-1}" != 0 ]; then
  # shellcheck disable=SC2086
  timeout "${BENCH_TIMEOUT:-300}" python3 -m grokpipe.bench \
    ${BENCH_ARGS:---precision bf16 --sizes 64 --skip grok --steps 3000} --out "$OUT/bench.json" \
    > "$OUT/bench.log" 2>&1
  bench_rc=$?
fi
t2=$(date +%s)
echo "== gpu checks: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true) =="
if [ "${TEST_JOBS:-1}" -gt 1 ]; then
  echo "cuda tests: $tests_rc failed in $((t1 - t0)) s:" && cut -c1-200 "$OUT/cuda_tests.log"
else
  echo "cuda tests: rc $tests_rc in $((t1 - t0)) s: $(tail -n 1 "$OUT/cuda_tests.log")"
fi
echo "bench: rc $bench_rc in $((t2 - t1)) s ($OUT/bench.json keeps every finished part)"
[ "$bench_rc" != skipped ] && grep -E "^(reference|engine x)" "$OUT/bench.log" | cut -c1-160
# the exit status says whether the tests and the bench passed (a skipped bench is no failure)
[ "$tests_rc" = 0 ] && { [ "$bench_rc" = skipped ] || [ "$bench_rc" = 0 ]; }
