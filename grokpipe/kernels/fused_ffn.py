"""The transformer's feed-forward block for a whole ensemble as three Triton kernels that never
write its hidden activations (experimental, `engine.fused_ffn`, off by default: not yet timed
on a GPU; BENCHMARKS.md, twentieth session).

Why: at 189 members the compiled step spends ~5 of its 7.2 ms in memory-bound kernels (twelfth
session's profile). The FFN's [rows, 512] hidden tensors are its largest: the GEMM writes the
pre-activation, a pointwise kernel reads it and writes the activation, the next GEMM reads that,
and the backward moves them again, ~11 KB a row in all. Here each kernel keeps a tile of rows'
hidden values in registers, a chunk of `d_ff` at a time, and recomputes them in the backward
(the products are cheap: the step is far from its FLOP bound), so only the block's input,
output and gradients cross memory.

The block computes, per member e (the arithmetic of `Transformer._ffn` under `precision: bf16`,
with its rounding points):

    pre = bf16(x @ W1) + b1            x, W1, W2 bfloat16; b1, b2 float32
    out = bf16(bf16(gelu(pre)) @ W2) + b2

Its gradients round where autograd rounds that code's: every product's output to bfloat16,
accumulation in float32. The weight gradients sum over each member's rows in one program, in
a fixed order, without atomic adds: a rerun gives the same bits (README "Reproducibility").
Summation orders inside the products differ from cuBLAS's, so results match the compiled
step's to rounding, not bit for bit.

Kernels, for x [E, R, D], W1 [E, D, F], W2 [E, F, D]:
- `_ffn_forward`: one program per (member, tile of rows);
- `_ffn_input_grad`: the same grid; the gradient of x;
- `_ffn_weight_grads`: one program per (member, chunk of F), looping over the member's rows:
  W1's, W2's and b1's gradients. b2's is a plain sum, left to torch.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Rows a program holds. In the weight gradients it is the depth of each partial sum over rows,
# so it fixes their summation order: a constant, never a choice timed per process (README
# "Reproducibility"). The forward's and input gradient's results do not depend on it.
ROWS_PER_TILE = 32
HIDDEN_PER_CHUNK = 64  # hidden units held at a time
# Triton's CPU interpreter (TRITON_INTERPRET=1, the tests) gets bfloat16 wrong twice (triton
# 3.9): its products multiply the raw integers bfloat16 values are stored as, and its casts
# from float32 truncate instead of rounding to nearest. There the kernels round by hand and
# multiply the bfloat16 values widened to float32 (exact products, float32 sums, as tensor
# cores compute them): the same arithmetic, slower.
EMULATE_BF16 = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _bf16(x, EMULATE: tl.constexpr):
    """x (float32) rounded to bfloat16, to nearest even (NaN and infinity aside)."""
    if EMULATE:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True).to(tl.bfloat16)
    return x.to(tl.bfloat16)


@triton.jit
def _dot(a, b, EMULATE: tl.constexpr):
    """a @ b of bfloat16 tiles, summed in float32."""
    if EMULATE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _gelu(x):
    return 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))


@triton.jit
def _gelu_grad(x):
    cdf = 0.5 * (1.0 + tl.erf(x * 0.7071067811865476))
    pdf = tl.exp(-0.5 * x * x) * 0.3989422804014327
    return cdf + x * pdf


@triton.jit
def _pre_activation(
    x,
    w1_ptr,
    b1_ptr,
    e,
    c,
    D: tl.constexpr,
    F: tl.constexpr,
    BF: tl.constexpr,
    EMULATE: tl.constexpr,
):
    """bf16(x @ W1[:, c:c+BF]) + b1[c:c+BF], float32, for a tile x [BR, D] (bfloat16)."""
    d = tl.arange(0, D)
    f = c + tl.arange(0, BF)
    w1 = tl.load(w1_ptr + e * D * F + d[:, None] * F + f[None, :])
    b1 = tl.load(b1_ptr + e * F + f)
    return _bf16(_dot(x, w1, EMULATE), EMULATE).to(tl.float32) + b1[None, :]


@triton.jit
def _rows(e, first, R, D: tl.constexpr, BR: tl.constexpr):
    """Offsets [BR, D] of rows first..first+BR of member e in an [E, R, D] tensor, and the mask
    of those below R."""
    r = first + tl.arange(0, BR)
    at = e * R * D + r[:, None] * D + tl.arange(0, D)[None, :]
    return at, (r < R)[:, None]


@triton.jit
def _ffn_forward(
    x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr,
    R, D: tl.constexpr, F: tl.constexpr, BR: tl.constexpr, BF: tl.constexpr,
    EMULATE: tl.constexpr,
):  # fmt: skip
    e, tile = tl.program_id(0), tl.program_id(1)
    d = tl.arange(0, D)
    at, rows = _rows(e, tile * BR, R, D, BR)
    x = tl.load(x_ptr + at, mask=rows, other=0.0)
    acc = tl.zeros((BR, D), dtype=tl.float32)
    for c in range(0, F, BF):
        z = _bf16(_gelu(_pre_activation(x, w1_ptr, b1_ptr, e, c, D, F, BF, EMULATE)), EMULATE)
        f = c + tl.arange(0, BF)
        w2 = tl.load(w2_ptr + e * F * D + f[:, None] * D + d[None, :])
        acc += _dot(z, w2, EMULATE)
    b2 = tl.load(b2_ptr + e * D + d)
    out = _bf16(acc, EMULATE).to(tl.float32) + b2[None, :]
    tl.store(out_ptr + at, out, mask=rows)


@triton.jit
def _ffn_input_grad(
    x_ptr, w1_ptr, b1_ptr, w2_ptr, g_ptr, dx_ptr,
    R, D: tl.constexpr, F: tl.constexpr, BR: tl.constexpr, BF: tl.constexpr,
    EMULATE: tl.constexpr,
):  # fmt: skip
    e, tile = tl.program_id(0), tl.program_id(1)
    d = tl.arange(0, D)
    at, rows = _rows(e, tile * BR, R, D, BR)
    x = tl.load(x_ptr + at, mask=rows, other=0.0)
    g = _bf16(tl.load(g_ptr + at, mask=rows, other=0.0), EMULATE)
    acc = tl.zeros((BR, D), dtype=tl.float32)
    for c in range(0, F, BF):
        pre = _pre_activation(x, w1_ptr, b1_ptr, e, c, D, F, BF, EMULATE)
        f = c + tl.arange(0, BF)
        w2 = tl.load(w2_ptr + e * F * D + f[:, None] * D + d[None, :])  # [BF, D]
        dz = _bf16(_dot(g, tl.trans(w2), EMULATE), EMULATE).to(tl.float32)
        dpre = _bf16(dz * _gelu_grad(pre), EMULATE)
        w1 = tl.load(w1_ptr + e * D * F + d[:, None] * F + f[None, :])  # [D, BF]
        acc += _dot(dpre, tl.trans(w1), EMULATE)
    tl.store(dx_ptr + at, _bf16(acc, EMULATE), mask=rows)


@triton.jit
def _ffn_weight_grads(
    x_ptr, w1_ptr, b1_ptr, w2_ptr, g_ptr, dw1_ptr, db1_ptr, dw2_ptr,
    R, D: tl.constexpr, F: tl.constexpr, BR: tl.constexpr, BF: tl.constexpr,
    EMULATE: tl.constexpr,
):  # fmt: skip
    # the chunks of one member are neighbours in launch order, so the rows they all read
    # come from L2 rather than memory after the first
    chunk, e = tl.program_id(0), tl.program_id(1)
    c = chunk * BF
    d = tl.arange(0, D)
    f = c + tl.arange(0, BF)
    w2 = tl.load(w2_ptr + e * F * D + f[:, None] * D + d[None, :])  # [BF, D]
    dw1 = tl.zeros((D, BF), dtype=tl.float32)
    dw2 = tl.zeros((BF, D), dtype=tl.float32)
    db1 = tl.zeros((BF,), dtype=tl.float32)
    for start in range(0, R, BR):
        at, rows = _rows(e, start, R, D, BR)
        x = tl.load(x_ptr + at, mask=rows, other=0.0)
        g = _bf16(tl.load(g_ptr + at, mask=rows, other=0.0), EMULATE)
        pre = _pre_activation(x, w1_ptr, b1_ptr, e, c, D, F, BF, EMULATE)
        z = _bf16(_gelu(pre), EMULATE)
        dw2 += _dot(tl.trans(z), g, EMULATE)
        dz = _bf16(_dot(g, tl.trans(w2), EMULATE), EMULATE).to(tl.float32)
        dpre = tl.where(rows, dz * _gelu_grad(pre), 0.0)  # padded rows have pre = b1
        db1 += tl.sum(dpre, axis=0)
        dw1 += _dot(tl.trans(x), _bf16(dpre, EMULATE), EMULATE)
    tl.store(dw1_ptr + e * D * F + d[:, None] * F + f[None, :], _bf16(dw1, EMULATE))
    tl.store(dw2_ptr + e * F * D + f[:, None] * D + d[None, :], _bf16(dw2, EMULATE))
    tl.store(db1_ptr + e * F + f, db1)


def unsupported_sizes(d_model: int, d_ff: int) -> str | None:
    """Why the kernels cannot take a block of these sizes (None: they can): a tile's width is
    d_model whole, a power of two, and d_ff is taken in chunks of `HIDDEN_PER_CHUNK`."""
    if d_model & (d_model - 1) or d_model < 16 or d_ff % HIDDEN_PER_CHUNK:
        return (
            f"d_model {d_model} must be a power of two >= 16 and d_ff {d_ff} a multiple of "
            f"{HIDDEN_PER_CHUNK}"
        )
    return None


def _check(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2) -> None:
    E, _, D = x.shape
    F = w1.shape[-1]
    expected = {"w1": (E, D, F), "b1": (E, F), "w2": (E, F, D), "b2": (E, D)}
    for name, t in {"w1": w1, "b1": b1, "w2": w2, "b2": b2}.items():
        if tuple(t.shape) != expected[name]:
            raise ValueError(f"fused FFN: {name} is {tuple(t.shape)}, expected {expected[name]}")
    why = unsupported_sizes(D, F)
    if why:
        raise ValueError(f"fused FFN: {why}")


def ffn_forward(x, w1, b1, w2, b2) -> torch.Tensor:
    """out [E, R, D] float32 for x [E, R, D] (bfloat16), see the module docstring."""
    _check(x, w1, b1, w2, b2)
    x, w1, b1, w2, b2 = (t.contiguous() for t in (x, w1, b1, w2, b2))
    E, R, D = x.shape
    F = w1.shape[-1]
    out = torch.empty(E, R, D, dtype=torch.float32, device=x.device)
    grid = (E, triton.cdiv(R, ROWS_PER_TILE))
    _ffn_forward[grid](
        x, w1, b1, w2, b2, out, R, D, F, BR=ROWS_PER_TILE, BF=HIDDEN_PER_CHUNK, EMULATE=EMULATE_BF16
    )
    return out


def ffn_backward(x, w1, b1, w2, g) -> tuple[torch.Tensor, ...]:
    """Gradients (dx bf16, dW1 bf16, db1 fp32, dW2 bf16, db2 fp32) for the output gradient
    g [E, R, D] (float32)."""
    x, w1, b1, w2, g = (t.contiguous() for t in (x, w1, b1, w2, g))
    E, R, D = x.shape
    F = w1.shape[-1]
    dx = torch.empty_like(x)
    dw1, dw2 = torch.empty_like(w1), torch.empty_like(w2)
    db1 = torch.empty_like(b1)
    _ffn_input_grad[(E, triton.cdiv(R, ROWS_PER_TILE))](
        x, w1, b1, w2, g, dx, R, D, F, BR=ROWS_PER_TILE, BF=HIDDEN_PER_CHUNK, EMULATE=EMULATE_BF16
    )
    # two [D, BF] float32 accumulators: eight warps keep them in registers
    _ffn_weight_grads[(F // HIDDEN_PER_CHUNK, E)](
        x, w1, b1, w2, g, dw1, db1, dw2, R, D, F,
        BR=ROWS_PER_TILE, BF=HIDDEN_PER_CHUNK, EMULATE=EMULATE_BF16, num_warps=8,
    )  # fmt: skip
    return dx, dw1, db1, dw2, g.sum(dim=1)


def reference_ffn(x, w1, b1, w2, b2) -> torch.Tensor:
    """The block as `Transformer._ffn` computes it under `precision: bf16` (torch ops)."""
    pre = torch.bmm(x, w1) + b1[:, None, :]
    z = torch.nn.functional.gelu(pre).to(torch.bfloat16)
    return torch.bmm(z, w2) + b2[:, None, :]


# --- as a PyTorch operator -----------------------------------------------------------------
# A custom operator, opaque to torch.compile: the step's graph calls the three kernels as they
# are (inductor would not fuse across them anyway), CUDA graphs capture their launches, and
# autograd reaches the backward kernels through `register_autograd`.


@torch.library.custom_op("grokpipe::fused_ffn", mutates_args=())
def fused_ffn(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
) -> torch.Tensor:
    return ffn_forward(x, w1, b1, w2, b2)


@fused_ffn.register_fake
def _fused_ffn_fake(x, w1, b1, w2, b2):
    return x.new_empty(x.shape, dtype=torch.float32)


@torch.library.custom_op("grokpipe::fused_ffn_backward", mutates_args=())
def fused_ffn_backward(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, g: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return ffn_backward(x, w1, b1, w2, g)


@fused_ffn_backward.register_fake
def _fused_ffn_backward_fake(x, w1, b1, w2, g):
    E, _, D = x.shape
    return (
        torch.empty_like(x),
        torch.empty_like(w1),
        torch.empty_like(b1),
        torch.empty_like(w2),
        g.new_empty((E, D)),
    )


def _setup_context(ctx, inputs, output) -> None:
    x, w1, b1, w2, _ = inputs
    ctx.save_for_backward(x, w1, b1, w2)


def _backward(ctx, grad):
    return fused_ffn_backward(*ctx.saved_tensors, grad)


fused_ffn.register_autograd(_backward, setup_context=_setup_context)


def ffn_block(h: torch.Tensor, w1, b1, w2, b2) -> torch.Tensor:
    """`Transformer._ffn` under bf16 with GELU, fused: h [E, ..., D] (float32, the LayerNorm's
    output) -> [E, ..., D] float32. Weights are the float32 parameters; their bfloat16 copies
    and the gradients' way back to float32 are autograd's, as in `EnsembleModel.mm`."""
    bf = torch.bfloat16
    x = h.reshape(h.shape[0], -1, h.shape[-1]).to(bf)
    return fused_ffn(x, w1.to(bf), b1, w2.to(bf), b2).reshape(h.shape)
