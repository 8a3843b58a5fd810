#!/usr/bin/env bash
# Time the default `dvc repro` on a GPU machine whose image has torch but not dvc (the numbers
# in BENCHMARKS.md). dvc comes as wheels in ./.whl (see the project's notes on the GPU machine).
#
#   scripts/gpu_pipeline.sh start [STAGE..]  copy the project to $GP_WORKDIR, start `dvc repro`
#                                            in the background (it outlives the calling shell);
#                                            the STAGEs named are reproduced first, in order
#   scripts/gpu_pipeline.sh wait SECONDS     print progress until it ends or SECONDS pass
#   scripts/gpu_pipeline.sh collect DIR      copy dvc.lock, the timed log, and archives of the
#                                            metrics, the HTML report, figures, curves and each
#                                            experiment's per-job training timings
#   scripts/gpu_pipeline.sh times [LOG]      each stage's wall seconds, read from the timed log
#                                            (also on a collected copy, on any machine)
#   scripts/gpu_pipeline.sh rerun EXP..      train each experiment EXP again from scratch (no
#                                            checkpoints) and analyse it, then say which of its
#                                            run files and metrics are byte-identical to the
#                                            first training's: GPU reproducibility, end to end
#
# GP_FRESH_COMPILE=1 with `rerun` first empties data/compile_cache/ and runs the precompile
# stage again, so the retraining loads steps compiled anew, as a new clone or machine would.
#
# GP_ONLY=1 with `start STAGE..` reproduces only the named stages (and what they need).
# GP_SET="key=value ..." sets params.yaml keys (dotted paths, YAML values) in the copy before
# the run, e.g. GP_SET="defaults.arithmetic.train.precision=bf16".
#
# The copy keeps the DVC cache and checkpoints between calls; the log prefixes each line with
# seconds since the start, so per-stage wall times can be read from it.
set -uo pipefail
W=${GP_WORKDIR:-/root/gp}
export PYTHONPATH=/tmp/site:$W PATH=/tmp/bin:/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
# shellcheck source=scripts/gpu_site.sh
source "$(dirname "$0")/gpu_site.sh"

# `wait` and `collect` on a machine where no `start` ran (a fresh one, after the warm machine
# was given back between calls) fail at once: the 32nd session's `wait 560` on a bare machine
# spent 560 s of device time waiting for a log that could never appear.
require_started() {
  [ -f "$W/pipeline.log" ] || {
    echo "no pipeline was started on this machine ($W/pipeline.log missing): a fresh machine?" \
      "run '$0 start' again" >&2
    exit 3
  }
}

case "${1:-}" in
start)
  install_wheels dvc
  # grokpipe's own dependencies that the GPU image may lack travel in .whl too
  python3 -c "import threadpoolctl" || {
    echo "threadpoolctl missing: add its wheel (pip download --no-deps threadpoolctl -d .whl)" >&2
    exit 1
  }
  python3 -c "import _ruamel_yaml" || {  # ruamel.yaml.clib: DVC's lock-file loads, ~2.4x slower without
    echo "ruamel.yaml.clib missing: add its wheel (pip download --no-deps ruamel.yaml.clib" \
      "-d .whl --python-version 3.12 --only-binary :all: --platform manylinux2014_x86_64)" >&2
    exit 1
  }
  byte_compile_site_once
  unset PYTHONDONTWRITEBYTECODE  # and let this run cache its own bytecode
  mkdir -p /tmp/bin
  printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > /tmp/bin/python
  chmod +x /tmp/bin/python
  rm -rf "$W" && mkdir -p "$W"
  cp -r dvc.yaml params.yaml stages grokpipe .dvc pyproject.toml "$W"/
  cd "$W" || exit 1
  sed -i 's/^  progress: true/  progress: false/' params.yaml  # a log, not a terminal
  if [ -n "${GP_SET:-}" ]; then
    python3 - $GP_SET <<'PY' || exit 1
import sys, yaml
params = yaml.safe_load(open("params.yaml"))
for item in sys.argv[1:]:
    key, value = item.split("=", 1)
    *path, last = key.split(".")
    node = params
    for k in path:
        node = node[k]
    node[last] = yaml.safe_load(value)
    print(f"params.yaml: {key} = {node[last]!r}")
yaml.safe_dump(params, open("params.yaml", "w"), sort_keys=False)
PY
  fi
  git init -q && git add -A && git -c user.email=gp@localhost -c user.name=gp commit -qm run
  shift
  setsid nohup bash -c '
    t0=$(date +%s)
    # --keep-going: a failed stage still lets every stage that does not need it be timed
    { for stage in "$@"; do dvc repro "$stage" || exit 1; done
      [ -n "${GP_ONLY:-}" ] || dvc repro --keep-going; } 2>&1 |
      while IFS= read -r line; do echo "$(( $(date +%s) - t0 )) $line"; done > pipeline.log
    echo "EXIT ${PIPESTATUS[0]} after $(( $(date +%s) - t0 )) s" >> pipeline.log
  ' pipeline "$@" > /dev/null 2>&1 < /dev/null &
  # the background shell creates pipeline.log; a `wait` chained right after this `start`
  # found none yet and stopped at once (34th session)
  for _ in $(seq 50); do [ -f pipeline.log ] && break; sleep 0.2; done
  echo "started in $W"
  ;;
wait)
  require_started
  end=$(( $(date +%s) + ${2:-500} ))
  while [ "$(date +%s)" -lt "$end" ] && ! grep -q '^EXIT' "$W/pipeline.log" 2>/dev/null; do
    sleep 20
  done
  grep -E "Running stage|precompile:|EXIT|Error|ERROR" "$W/pipeline.log" | tail -n 60
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
  ;;
collect)
  require_started
  out=${2:?collect needs a directory}
  cd "$W" || exit 1
  cp pipeline.log dvc.lock "$out"/
  # one archive per kind: a device call returns no file over 16 MiB, and all of reports/ was
  # more than that after a full run (ninth session)
  # metrics.tgz stays small enough to keep in benchmarks/ (~120 KB); the report (~15 MB) is
  # its own archive, to look at, not to commit
  tar czf "$out/metrics.tgz" reports/metrics 2>/dev/null
  tar czf "$out/report.tgz" reports/index.html 2>/dev/null
  tar czf "$out/figures.tgz" reports/figures 2>/dev/null
  tar czf "$out/curves.tgz" reports/curves 2>/dev/null
  tar czf "$out/timings.tgz" data/runs/*/timing.json 2>/dev/null
  ;;
rerun)
  shift
  [ $# -gt 0 ] || { echo "rerun needs an experiment" >&2; exit 2; }
  cd "$W" || exit 1
  if [ -n "${GP_FRESH_COMPILE:-}" ]; then  # rewrites data/precompiled only, not the runs
    rm -rf data/compile_cache
    t0=$(date +%s)
    dvc repro -f -s precompile > rerun_precompile.log 2>&1
    echo "precompile from an empty cache: rc $? in $(( $(date +%s) - t0 )) s"
  fi
  for exp in "$@"; do
    first=/tmp/first_$exp  # the first training's files, to compare the rerun's with
    rm -rf "$first" && mkdir -p "$first" && cp -r "data/runs/$exp" "reports/metrics/$exp.json" "$first"/
    rm -rf "data/checkpoints/$exp"
    t0=$(date +%s)
    { dvc repro -f -s "train@$exp" && dvc repro -f -s "analyze@$exp"; } > "rerun_$exp.log" 2>&1
    echo "rerun of $exp: rc $? in $(( $(date +%s) - t0 )) s"
    for f in "$first/$exp"/*; do
      name=${f#"$first"/}
      [ "$name" = "$exp/timing.json" ] && continue  # wall times differ by nature
      if cmp -s "$f" "data/runs/$name"; then echo "identical: $name"; else echo "DIFFERS:   $name"; fi
    done
    # the metrics, but for their wall times
    python3 - "$first/$exp.json" "reports/metrics/$exp.json" <<'PY'
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:])
for m in (a, b):
    m.pop("timing", None)
print("identical:" if a == b else "DIFFERS:  ", sys.argv[2].rsplit("/", 1)[1], "(but its timing)")
PY
  done
  ;;
times)
  # a stage runs from its "Running stage" line to the next one, the last to the EXIT line
  awk '/Running stage/ { if (name) printf "%-34s %5d s\n", name, $1 - t; t = $1; name = $4 }
       /^EXIT/ { if (name) printf "%-34s %5d s\n", name, $4 - t; print }' "${2:-$W/pipeline.log}" |
    tr -d "':"
  ;;
*)
  echo "usage: $0 start [STAGE..] | wait SECONDS | collect DIR | times [LOG] | rerun EXP.." >&2
  exit 2
  ;;
esac
