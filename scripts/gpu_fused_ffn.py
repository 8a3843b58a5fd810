"""Is the fused FFN (`grokpipe.kernels.fused_ffn`) faster than what torch.compile makes of the
same block, at the fraction sweep's largest ensemble? One device call, prints a table last.

    python3 scripts/gpu_fused_ffn.py [MEMBERS] [ROWS]

Defaults: 189 members, 1 024 rows a member (layer 0's suffix rows: batch 512 x 2 positions),
d_model 128, d_ff 512, bfloat16 products. Times forward + backward per call (CUDA events, after
warm-up), and checks the fused gradients against PyTorch's eager ones (relative norm).
"""

from __future__ import annotations

import sys
import time

import torch

from grokpipe.kernels import fused_ffn
from grokpipe.train.gradients import allow_compiled_gradients, gradient_anchor


def timed(fn, repeats: int = 20) -> float:
    """Milliseconds per call."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def main() -> None:
    E = int(sys.argv[1]) if len(sys.argv) > 1 else 189
    R = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    D, F = 128, 512
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    bf = torch.bfloat16
    x = torch.randn(E, R, D, device=dev, generator=gen).to(bf)
    w1 = (torch.randn(E, D, F, device=dev, generator=gen) / D**0.5).to(bf)
    w2 = (torch.randn(E, F, D, device=dev, generator=gen) / F**0.5).to(bf)
    b1 = torch.randn(E, F, device=dev, generator=gen) * 0.1
    b2 = torch.randn(E, D, device=dev, generator=gen) * 0.1
    g = torch.randn(E, R, D, device=dev, generator=gen)
    # gradients as the engine's step takes them (`loss_gradients`): at the inputs plus a zero
    # that requires grad, so that dynamo traces `autograd.grad` into one graph
    allow_compiled_gradients()
    anchor = gradient_anchor(dev)
    inputs = (x, w1, b1, w2, b2)

    def reference_step():
        with torch.enable_grad():
            leaves = [t + anchor.to(t.dtype) for t in inputs]
            out = fused_ffn.reference_ffn(*leaves)
            grads = torch.autograd.grad(out, leaves, g)
        return (out.detach(), *grads)

    def fused_step():
        out = fused_ffn.ffn_forward(x, w1, b1, w2, b2)
        return (out, *fused_ffn.ffn_backward(x, w1, b1, w2, g))

    names = ["out", "dx", "dW1", "db1", "dW2", "db2"]
    want = reference_step()
    t0 = time.perf_counter()
    got = fused_step()
    torch.cuda.synchronize()
    print(f"fused kernels compiled in {time.perf_counter() - t0:.1f} s", flush=True)
    for n, a, b in zip(names, got, want):
        rel = ((a.float() - b.float()).norm() / b.float().norm()).item()
        print(f"  {n}: relative difference from eager {rel:.2e}", flush=True)

    rows = [("eager PyTorch", timed(reference_step))]
    print(rows[-1], flush=True)
    for tile in (32, 64, 16):
        fused_ffn.ROWS_PER_TILE = tile
        rows.append((f"fused, {tile} rows a tile", timed(fused_step)))
        print(rows[-1], flush=True)
    fused_ffn.ROWS_PER_TILE = 32
    rows.append(("fused, forward only", timed(lambda: fused_ffn.ffn_forward(*inputs))))
    t0 = time.perf_counter()
    compiled = torch.compile(reference_step, fullgraph=True)
    compiled()
    print(f"torch.compile in {time.perf_counter() - t0:.1f} s", flush=True)
    rows.append(("torch.compile (inductor's defaults)", timed(compiled)))
    print(
        f"\n=== FFN block, {E} members x {R} rows, d {D}, d_ff {F}, {torch.cuda.get_device_name()}"
    )
    print("| variant | ms per forward+backward |\n| --- | ---: |")
    for name, ms in rows:
        print(f"| {name} | {ms:.3f} |")


if __name__ == "__main__":
    main()
