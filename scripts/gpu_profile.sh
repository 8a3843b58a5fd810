#!/usr/bin/env bash
# One device call: where the arithmetic step's time goes, and cheap ways to cut it.
# VARIANTS lists "name:inductor options:flag to drop[:VAR=value]" (options comma-separated,
# "-" for none; flag "_" drops nothing, "+g" adds flag g; VAR=value is set in the variant's
# environment, e.g. GP_DETERMINISTIC=1, or SIZES=E/precision/flags/steps,... to give the variant
# sizes of its own instead of SIZES's: one process per measurement compiles them all side by
# side); the first is profiled too (its top kernels at 189
# and 6 members, and their Triton sources into kernels.txt). The default list:
#   base     the pipeline's step as `dvc repro` compiles it on a GPU (bf16, dynamic sizes,
#            combo kernels, deterministic gathers; shared prefixes from 10 members up), timed
#            at 6, 9, 51 and 189 members
#   nodet    the same with indexed gathers (`engine.deterministic: false`)
#   noprefix the same without shared prefixes at 51 and 189 too
# (The twelfth session also tried inductor options this way: split_reductions=0,
# aggressive_fusion=1, triton.multi_kernel=1; BENCHMARKS.md.)
# Each variant compiles in its own process beside the others; the first times once every
# compile is done, each later one after the one before (GP_WAIT_FOR), so timings overlap
# neither each other nor a compile. (In the twelfth session's two calls the first variant
# timed while the others still compiled.) A table per variant is printed last.
# Usage on the device: OUT=... [VARIANTS="..."] [PROFILE=0] scripts/gpu_profile.sh
set -uo pipefail
OUT=${OUT:-gpu_profile}
mkdir -p "$OUT"
# the variants' hand-over markers stay out of $OUT: a device call brings back at most 8 files,
# and in the twenty-third session the markers of four variants crowded out three of the logs
MARKS=$(mktemp -d)
trap 'rm -rf "$MARKS"' EXIT
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# shellcheck source=scripts/gpu_site.sh
source "$(dirname "$0")/gpu_site.sh"
byte_compile_site_once
LIMIT=${LIMIT:-540}
SIZES=${SIZES:-"6:bf16:cdkg:5000 9:bf16:cdkg:5000 51:bf16:csdkg:2000 189:bf16:csdkg:600"}
t0=$(date +%s)
probe() { # name, inductor options, the flag to drop, extra specs, the marker to wait for, env
  local name=$1 opts=$2 drop=$3 extra=$4 after=$5 env=${6:-GP_NONE=} specs="" sizes=$SIZES
  if [ "${env#SIZES=}" != "$env" ]; then
    sizes=${env#SIZES=} env=GP_NONE=
    sizes=${sizes//,/ } && sizes=${sizes//\//:}
  fi
  for s in $sizes; do
    IFS=: read -r e p f n <<< "$s"
    if [ "${drop#+}" != "$drop" ]; then f="$f${drop#+}"; else f=${f//$drop/}; fi
    specs="$specs $e:$p:$f:$n"
  done
  # shellcheck disable=SC2086
  env "$env" GP_INDUCTOR="$opts" GP_WAIT_FOR="$after" GP_DONE="$MARKS/$name.done" \
    GP_COMPILED="$MARKS/$name.compiled" GP_KERNELS="$OUT/kernels.txt" \
    TORCHINDUCTOR_CACHE_DIR="/tmp/inductor_$name" \
    timeout "$LIMIT" python3 scripts/gpu_probe.py $specs $extra > "$OUT/probe_$name.log" 2>&1
  touch "$MARKS/$name.done" "$MARKS/$name.compiled"
}
VARIANTS=${VARIANTS:-"base:-:_ nodet:-:g noprefix:-:s"}
names=""
for v in $VARIANTS; do names="$names ${v%%:*}"; done
last=${names##* }
# the first variant times once the last has compiled (every compile done: none slows a
# timing); each later one after the one before it has timed
prev="" first=1
for v in $VARIANTS; do
  IFS=: read -r name opts drop venv <<< "$v"
  [ "$opts" = "-" ] && opts=""
  extra=""
  [ -n "$first" ] && [ "${PROFILE:-1}" = 1 ] && extra="189:bf16:csdkgP 6:bf16:cdkgP"
  after=$MARKS/$last.compiled
  [ -n "$prev" ] && after=$MARKS/$prev.done
  probe "$name" "$opts" "$drop" "$extra" "$after" "$venv" &
  prev=$name first=""
done
wait
echo "== $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), $(($(date +%s) - t0)) s =="
for name in $names; do
  echo "-- $name"
  grep -E "^\| [0-9]|profile E=|prepare|repeat|Error" "$OUT/probe_$name.log"
done
first=${names# } && first=${first%% *}
grep -A12 "profile E=" "$OUT/probe_$first.log" | cut -c1-150
