"""Tile sizes, warps and pipeline stages of the fused FFN's three kernels, each timed alone at
the fraction sweep's largest ensemble, against what torch.compile makes of the whole block.

Diagnostics for BENCHMARKS.md (one device call, a table last), not a test:

    python3 scripts/gpu_fused_tune.py [MEMBERS] [ROWS]

Every configuration's results are checked against PyTorch's (relative norm < 1e-2), so a fast
but wrong configuration cannot win. The weight-gradient kernel's rows a tile fix its summation
order: whatever wins becomes a constant in `grokpipe.kernels.fused_ffn`, never a choice timed
per process.
"""

from __future__ import annotations

import itertools
import sys

import torch
import triton

from grokpipe.kernels import fused_ffn as ff


def timed(fn, repeats: int = 20) -> float:
    """Milliseconds per call (CUDA events, after warm-up)."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def main() -> None:
    E = int(sys.argv[1]) if len(sys.argv) > 1 else 189
    R = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    D, F = 128, 512
    dev, bf = torch.device("cuda"), torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(E, R, D, device=dev, generator=gen).to(bf)
    w1 = (torch.randn(E, D, F, device=dev, generator=gen) / D**0.5).to(bf)
    w2 = (torch.randn(E, F, D, device=dev, generator=gen) / F**0.5).to(bf)
    b1 = torch.randn(E, F, device=dev, generator=gen) * 0.1
    b2 = torch.randn(E, D, device=dev, generator=gen) * 0.1
    g = torch.randn(E, R, D, device=dev, generator=gen)

    leaves = [t.clone().requires_grad_(True) for t in (x, w1, b1, w2, b2)]
    ref_out = ff.reference_ffn(*leaves)
    ref_dx, ref_dw1, ref_db1, ref_dw2, _ = torch.autograd.grad(ref_out, leaves, g)
    ref_out = ref_out.detach()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    print(f"{E} members x {R} rows, d {D}, d_ff {F}", flush=True)

    rows = []

    def trial(kernel: str, cfg: dict, launch, check) -> None:
        try:
            launch()
            torch.cuda.synchronize()
            err = check()
            ms = timed(launch) if err < 1e-2 else float("nan")
        except Exception as exc:  # out of resources, a bad layout: say so and go on
            print(f"{kernel} {cfg}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
            return
        rows.append((kernel, cfg, ms, err))
        print(f"{kernel} {cfg}: {ms:.3f} ms, error {err:.1e}", flush=True)

    out = torch.empty(E, R, D, dtype=torch.float32, device=dev)
    dx = torch.empty_like(x)
    dw1, dw2, db1 = torch.empty_like(w1), torch.empty_like(w2), torch.empty_like(b1)
    grid_space = itertools.product((64, 128), (32, 64, 128), (4, 8), (1, 2, 3))
    for br, bfc, warps, stages in grid_space:
        cfg = {"BR": br, "BF": bfc, "warps": warps, "stages": stages}
        common = dict(BR=br, BF=bfc, EMULATE=False, num_warps=warps, num_stages=stages)
        tiles = (E, triton.cdiv(R, br))
        trial(
            "forward",
            cfg,
            lambda t=tiles, k=common: ff._ffn_forward[t](x, w1, b1, w2, b2, out, R, D, F, **k),
            lambda: rel(out, ref_out),
        )
        trial(
            "input_grad",
            cfg,
            lambda t=tiles, k=common: ff._ffn_input_grad[t](x, w1, b1, w2, g, dx, R, D, F, **k),
            lambda: rel(dx, ref_dx),
        )
        if bfc <= 64:  # two [D, BF] float32 accumulators must stay in registers
            trial(
                "weight_grads",
                cfg,
                lambda n=F // bfc, k=common: ff._ffn_weight_grads[(n, E)](
                    x, w1, b1, w2, g, dw1, db1, dw2, R, D, F, **k
                ),
                lambda: max(rel(dw1, ref_dw1), rel(dw2, ref_dw2), rel(db1, ref_db1)),
            )

    def block():
        return ff.reference_ffn(x, w1, b1, w2, b2)

    compiled_fwd = torch.compile(block)
    leaves_c = [t.clone().requires_grad_(True) for t in (x, w1, b1, w2, b2)]

    compiled_block = torch.compile(ff.reference_ffn)

    def fwd_bwd():
        o = compiled_block(*leaves_c)
        return torch.autograd.grad(o, leaves_c, g)

    inductor_fwd = timed(compiled_fwd)
    inductor_all = timed(fwd_bwd)

    print("\n=== best of each kernel (ms), against torch.compile of the block")
    print("| kernel | BR | BF | warps | stages | ms | error |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    best = {}
    for kernel, cfg, ms, err in rows:
        if ms == ms and (kernel not in best or ms < best[kernel][1]):
            best[kernel] = (cfg, ms, err)
    for kernel, (cfg, ms, err) in best.items():
        sizes = " | ".join(str(cfg[k]) for k in ("BR", "BF", "warps", "stages"))
        print(f"| {kernel} | {sizes} | {ms:.3f} | {err:.1e} |")
    total = sum(ms for _, ms, _ in best.values())
    print(f"| fused, best of each, in all | | | | | {total:.3f} | |")
    print(f"| torch.compile, forward | | | | | {inductor_fwd:.3f} | |")
    print(f"| torch.compile, forward + backward | | | | | {inductor_all:.3f} | |")


if __name__ == "__main__":
    main()
