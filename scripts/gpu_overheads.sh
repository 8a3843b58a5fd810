#!/usr/bin/env bash
# The fixed costs every DVC stage pays on the GPU host before and after its real work, so that
# the per-stage overhead of the main job can be attributed (BENCHMARKS.md):
#   - a fresh Python importing torch, the train stage's and the analysis stage's modules
#     (twice each: the first import may read cold files);
#   - CUDA's first context;
#   - writing and reading a checkpoint the size of the fraction sweep's 162-member ensemble.
# Usage on the device: scripts/gpu_overheads.sh   (results under $OUT, a table printed last)
set -uo pipefail
OUT=${OUT:-gpu_overheads}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
secs() { # label, then a command: one row of the table
  local label=$1 t0 t1
  shift
  t0=$(date +%s%N)
  "$@" >>"$OUT/overheads.log" 2>&1
  t1=$(date +%s%N)
  local ms=$(((t1 - t0) / 1000000))
  printf '| %s | %d.%02d |\n' "$label" $((ms / 1000)) $((ms % 1000 / 10)) >>"$OUT/overheads.md"
}
echo "| what | seconds |" >"$OUT/overheads.md"
echo "| --- | ---: |" >>"$OUT/overheads.md"
for i in 1 2; do
  secs "python -c pass ($i)" python3 -c pass
  secs "import torch ($i)" python3 -c "import torch"
  secs "import stages.train ($i)" python3 -c "import stages.train"
  secs "import stages.analyze ($i)" python3 -c "import stages.analyze"
done
secs "import torch + first CUDA tensor" python3 -c "import torch; torch.zeros(1, device='cuda')"
python3 -X importtime -c "import stages.analyze" 2>"$OUT/importtime_analyze.txt"
python3 -X importtime -c "import stages.train" 2>"$OUT/importtime_train.txt"
python3 - >>"$OUT/overheads.md" 2>>"$OUT/overheads.log" <<'EOF'
import os, time, torch
DEV = "cuda" if torch.cuda.is_available() else "cpu"
# a 162-member ensemble of Power et al.'s transformer: ~420 k parameters a member, with AdamW's
# two moments
state = {f"t{i}": torch.randn(162 * 420_000, device=DEV) for i in range(3)}
torch.cuda.synchronize() if DEV == "cuda" else None
t = time.perf_counter()
host = {k: v.cpu() for k, v in state.items()}
t_copy = time.perf_counter() - t
os.makedirs("data", exist_ok=True)
t = time.perf_counter()
torch.save(host, "data/overhead_probe.pt")
os.sync()
t_save = time.perf_counter() - t
t = time.perf_counter()
torch.load("data/overhead_probe.pt")
t_load = time.perf_counter() - t
os.remove("data/overhead_probe.pt")
mb = sum(v.numel() * 4 for v in host.values()) / 2**20
print(f"| checkpoint {mb:.0f} MiB: device to host | {t_copy:.2f} |")
print(f"| checkpoint {mb:.0f} MiB: torch.save + sync | {t_save:.2f} |")
print(f"| checkpoint {mb:.0f} MiB: torch.load | {t_load:.2f} |")
EOF
sort -t'|' -k2 -n "$OUT/importtime_analyze.txt" | tail -n 12 >"$OUT/importtime_analyze_top.txt"
echo "== overheads on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), $(nproc) cores =="
cat "$OUT/overheads.md"
