"""Device probe: compile time, step rate and kernel profile of engine variants.

Diagnostics for BENCHMARKS.md, not a test. Each argument is one measurement,
`E:precision:flags[:steps]`, where flags is any of
  c  torch.compile the step (else eager + CUDA graph)
  s  share prefixes (`Transformer.forward_prefixed`)
  d  compile ensemble and task sizes as dynamic (cache reuse across ensembles)
  P  profile the compiled step (top kernels) instead of timing it
Example: `python scripts/gpu_probe.py 64:tf32:c 64:tf32:cs 64:tf32:csd 64:bf16:csd 64:tf32:csdP`
A table of every timed measurement is printed last.
"""

import sys
import time

import torch

from grokpipe.bench import power_block
from grokpipe.train.ensemble import EngineOptions, EnsembleTrainer
from grokpipe.train.members import members_from_block

T0 = time.perf_counter()
ROWS = []


def log(*a):
    print(f"[{time.perf_counter() - T0:7.1f}s]", *a, flush=True)


def trainer(E, precision, flags, steps):
    block = power_block("x/y", 97, steps, list(range(E)), precision=precision)
    opts = EngineOptions(
        device="cuda",
        compile="c" in flags,
        cuda_graph="P" not in flags,
        progress=False,
        share_prefixes="s" in flags,
        dynamic_sizes="d" in flags,
    )
    return EnsembleTrainer(members_from_block(block), opts)


def probe(E, precision, flags, steps):
    torch.cuda.reset_peak_memory_stats()
    t = trainer(E, precision, flags, steps)
    t.prepare()
    t.run()
    sps = t.timing.steps / t.timing.train_s
    row = (E, precision, flags, t.timing.compile_s, sps, E * sps)
    ROWS.append(row + (torch.cuda.max_memory_allocated() / 2**30,))
    log(f"E={E} {precision} {flags}: prepare {row[3]:.1f}s, {sps:.0f} steps/s, {row[5]:.0f} m-s/s")


def profile(E, precision, flags, steps=20):
    """Top CUDA kernels of the compiled step, without graph capture so each kernel shows."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    t = trainer(E, precision, flags, 100)
    t.prepare()
    for _ in range(5):
        t._train_fn()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            t._train_fn()
        torch.cuda.synchronize()
    rows = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)
    total = sum(e.device_time_total for e in rows)
    n = sum(e.count for e in rows) // steps
    log(f"profile E={E} {precision} {flags}: {total / steps / 1e3:.3f} ms/step, {n} kernels")
    for e in rows[:20]:
        log(f"  {e.device_time_total / steps / 1e3:7.3f} ms {e.count // steps:3d}x  {e.key[:100]}")


if __name__ == "__main__":
    for spec in sys.argv[1:]:
        parts = spec.split(":")
        E, precision, flags = int(parts[0]), parts[1], parts[2]
        steps = int(parts[3]) if len(parts) > 3 else 1000
        if "P" in flags:
            profile(E, precision, flags)
        else:
            probe(E, precision, flags, steps)
    print("\n| members | precision | flags | compile s | steps/s | model-steps/s | peak GiB |")
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: |")
    for E, prec, flags, comp, sps, msps, peak in ROWS:
        print(f"| {E} | {prec} | {flags} | {comp:.1f} | {sps:.0f} | {msps:.0f} | {peak:.2f} |")
