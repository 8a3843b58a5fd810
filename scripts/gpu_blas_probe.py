"""Device probe: does a batched bf16 product bring a memset along, and which BLAS library avoids it?

The sixteenth session's step profile listed 54 `Memset (Device)` beside 54 cuBLAS `nvjet`
products. In a latency-bound step (a small ensemble, replayed from a CUDA graph) each memset
is one more graph node. This times chains of the step's typical products, captured in a
CUDA graph, under cuBLAS and cuBLASLt, and counts the kernels and memsets of each.
Diagnostics for BENCHMARKS.md, not a test. Usage: `python scripts/gpu_blas_probe.py`.
"""

import time

import torch
from torch.profiler import ProfilerActivity, profile

# (rows, inner, out, layout) per member: the FFN's up product, its two backward products and
# the attention's input product; a layout's T reads that operand transposed
SHAPES = [
    (1024, 128, 512, "NN"),
    (1024, 512, 128, "NN"),
    (128, 1024, 512, "TN"),
    (1024, 128, 384, "NT"),
]
CHAIN = 20


def products(E, dtype=torch.bfloat16):
    out = []
    for rows, inner, cols, layout in SHAPES:
        a = torch.randn(E, rows, inner, device="cuda", dtype=dtype)
        b = torch.randn(E, inner, cols, device="cuda", dtype=dtype)
        if layout == "TN":
            a = a.transpose(1, 2).contiguous().transpose(1, 2)
        if layout == "NT":
            b = b.transpose(1, 2).contiguous().transpose(1, 2)
        out.append((a, b))
    return out


def run(pairs):
    for _ in range(CHAIN // len(pairs)):
        for a, b in pairs:
            torch.bmm(a, b)


def measure(E, lib):
    torch.backends.cuda.preferred_blas_library(lib)
    pairs = products(E)
    run(pairs)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run(pairs)
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    memsets = sum("Memset" in e.name for e in events)
    kernels = len(events) - memsets
    names = sorted({e.name[:60] for e in events if "Memset" not in e.name})
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        run(pairs)
    g.replay()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(200):
        g.replay()
    torch.cuda.synchronize()
    us = (time.perf_counter() - t0) / 200 / CHAIN * 1e6
    return kernels, memsets, us, names


if __name__ == "__main__":
    print(torch.__version__, torch.cuda.get_device_name(), torch.version.cuda)
    rows = []
    for E in (1, 9, 51, 189):
        for lib in ("cublas", "cublaslt"):
            k, m, us, names = measure(E, lib)
            rows.append((E, lib, k, m, us))
            print(E, lib, names, flush=True)
    print("\n| members | library | kernels | memsets | µs per product (graph replay) |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for E, lib, k, m, us in rows:
        print(f"| {E} | {lib} | {k} | {m} | {us:.1f} |")
