#!/usr/bin/env bash
# What bytecode saves each stage on a GPU image that ships without it (PYTHONDONTWRITEBYTECODE=1,
# no __pycache__): the same kind of stage timed before and after byte-compiling site-packages
# once, as a pip install would have. Then the CUDA tests (SKIP_TESTS=1: not). A table is
# printed last.
#   parity train stages (5 runs, 20 000 steps each, their step loaded from disk) and their
#   analysis stages; `import torch`.
# Usage on the device: OUT=... scripts/gpu_startup.sh   (with .whl carried, for pytest)
set -uo pipefail
OUT=${OUT:-gpu_startup}
mkdir -p "$OUT"
W=/root/gp_startup
export PYTHONPATH=/tmp/site:$W PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
# shellcheck source=scripts/gpu_site.sh
source "$(dirname "$0")/gpu_site.sh"
install_wheels pytest
rm -rf "$W" && mkdir -p "$W" && cp -r dvc.yaml params.yaml stages grokpipe tests "$W"/ && cd "$W" || exit 1
sed -i 's/^  progress: true/  progress: false/' params.yaml
row() { # label, command...: one timed row
  local label=$1 t0 t1 ms
  shift
  t0=$(date +%s%N)
  "$@" >>"$OUT/startup.log" 2>&1
  t1=$(date +%s%N)
  ms=$(((t1 - t0) / 1000000))
  printf '| %s | %d.%02d |\n' "$label" $((ms / 1000)) $((ms % 1000 / 10)) | tee -a "$OUT/startup.md"
}
echo "PYTHONDONTWRITEBYTECODE=${PYTHONDONTWRITEBYTECODE:-} " >"$OUT/startup.md"
row "generate (no bytecode)" python3 -m stages.generate
row "precompile (no bytecode)" python3 -m stages.precompile
row "import torch (no bytecode)" python3 -c "import torch"
row "train parity_grokking (no bytecode)" python3 -m stages.train parity_grokking
row "train parity_random_features (no bytecode)" python3 -m stages.train parity_random_features
row "analyze parity_grokking (no bytecode)" python3 -m stages.analyze parity_grokking
row "byte-compile site-packages + /tmp/site" byte_compile_site
unset PYTHONDONTWRITEBYTECODE
row "import torch (bytecode)" python3 -c "import torch"
row "train parity_known_k (bytecode, first)" python3 -m stages.train parity_known_k
row "train parity_double_grokking (bytecode)" python3 -m stages.train parity_double_grokking
row "analyze parity_known_k (bytecode)" python3 -m stages.analyze parity_known_k
row "analyze parity_double_grokking (bytecode)" python3 -m stages.analyze parity_double_grokking
grep -E "trained|precompile:" "$OUT/startup.log" | tail -n 8
if [ -z "${SKIP_TESTS:-}" ]; then
  t0=$(date +%s)
  timeout "${TEST_TIMEOUT:-330}" python3 -m pytest -q -p no:cacheprovider tests/test_engine_cuda.py \
    > "$OUT/cuda_tests.log" 2>&1
  echo "cuda tests: rc $? in $(($(date +%s) - t0)) s: $(tail -n 1 "$OUT/cuda_tests.log")"
fi
cat "$OUT/startup.md"
