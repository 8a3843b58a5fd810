"""Device probe: compile time and step rate of the engine variants (diagnostics, not a test)."""

import sys
import time

import torch

from grokpipe.bench import power_block
from grokpipe.train.ensemble import EngineOptions, EnsembleTrainer
from grokpipe.train.members import members_from_block

T0 = time.perf_counter()


def log(*a):
    print(f"[{time.perf_counter() - T0:7.1f}s]", *a, flush=True)


def probe(E, compile_, steps=1000, precision="tf32"):
    members = members_from_block(power_block("x/y", 97, steps, list(range(E)), precision=precision))
    t = EnsembleTrainer(
        members, EngineOptions(device="cuda", compile=compile_, cuda_graph=True, progress=False)
    )
    t0 = time.perf_counter()
    t.prepare()
    prep = time.perf_counter() - t0
    t.run()
    sps = t.timing.steps / t.timing.train_s
    log(
        f"E={E} compile={compile_} {precision}: prepare {prep:.1f}s, {sps:.0f} steps/s, "
        f"{E * sps:.0f} model-steps/s, peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    )


def profile(E, precision="tf32", steps=20):
    """Top CUDA kernels of the compiled step, without graph capture so each kernel shows."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    members = members_from_block(power_block("x/y", 97, 100, list(range(E)), precision=precision))
    t = EnsembleTrainer(
        members, EngineOptions(device="cuda", compile=True, cuda_graph=False, progress=False)
    )
    t.prepare()
    for _ in range(5):
        t._train_fn()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            t._train_fn()
        torch.cuda.synchronize()
    log(f"profile E={E} {precision}, per step:")
    rows = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)
    total = sum(e.device_time_total for e in rows)
    log(f"  total {total / steps / 1e3:.3f} ms/step, {sum(e.count for e in rows) // steps} kernels")
    for e in rows[:22]:
        log(f"  {e.device_time_total / steps / 1e3:7.3f} ms {e.count // steps:3d}x  {e.key[:110]}")


if __name__ == "__main__":
    import os

    if os.environ.get("COMBO"):
        torch._inductor.config.combo_kernels = True
        log("inductor combo_kernels on")
    for spec in sys.argv[1:]:
        E, c, prec = spec.split(":")
        if c == "p":
            profile(int(E), precision=prec)
        else:
            probe(int(E), c == "c", precision=prec)
