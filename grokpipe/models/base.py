"""The contract every model family keeps so that one engine can train all of them.

Parameters carry a leading ensemble axis E: member e of every tensor is one independent run.
Forward passes take inputs [E, B, ...] and are written with batched kernels, so E runs cost one
set of launches. Each member is initialised from its own generator, so a run's initial weights
do not depend on which ensemble it lands in.
"""

from __future__ import annotations

import math

import torch
from torch import nn

Tensor = torch.Tensor


class EnsembleModel(nn.Module):
    """Base class: subclasses register [E, ...] parameters and implement `init_member`/`forward`.

    `layer_groups()` names the layers in input→output order; per-layer training schedules
    (freezing, rate limiting) address them by name or by the aliases `first` and `last`.
    """

    def __init__(self, n_members: int):
        super().__init__()
        self.n_members = n_members
        # bfloat16 for mixed precision, None to multiply in the inputs' dtype (see `mm`)
        self.matmul_dtype: torch.dtype | None = None
        # gathers whose gradients sum in a fixed order, without atomic adds (see `take`)
        self.deterministic_gathers = False
        # the residual stream's dtype where a family has one (None: float32). Not a params
        # option: only `scripts/gpu_probe.py` (flag b) sets it, to measure what bfloat16
        # activations would gain on a GPU before anyone checks what they do to the science
        self.residual_dtype: torch.dtype | None = None

    def mm(self, x: Tensor, w: Tensor) -> Tensor:
        """Per-member matrix product in `matmul_dtype`: mixed precision written out.

        With bfloat16 this is torch.autocast's policy made explicit: the product takes its
        inputs in bfloat16 and returns bfloat16, while parameters, optimiser state, the residual
        stream, LayerNorm, softmax and the logits stay in float32 (the ops that add a float32
        bias or residual promote back). Autocast regions in a compiled graph make AOTAutograd
        bypass its cache, so every train stage re-ran the joint-graph tracing (measured on
        the CPU: a warm compile took 41 s with an autocast region, 17 s without)."""
        if self.matmul_dtype is None:
            return bmm(x, w)
        return bmm(x.to(self.matmul_dtype), w.to(self.matmul_dtype))

    def take(self, table: Tensor, index: Tensor) -> Tensor:
        """Each member's rows of its own table: table [E, U, ...], index [E, ...] (integers
        below U) -> [E, *index.shape[1:], ...].

        The backward of an indexed gather adds each row's gradient into the table with atomic
        adds on a GPU, in an order that changes from run to run; training is chaotic enough
        that two runs of the same seed then drift apart (twelfth session, H100: histories
        differed by up to 6.8 after 3 000 steps). With `deterministic_gathers`, where a
        backward may follow, the rows are the gather's but their gradient is a product with a
        one-hot matrix (`OneHotGradientGather`): a fixed summation order, in `matmul_dtype`
        on tensor cores like every other product of the step (the table's gradient is then
        rounded as the weights' gradients are: bfloat16 under `bf16`, TF32 under `tf32`).

        Until the seventeenth session the product was also computed in the forward (the rows
        plus `product - product.detach()`, an exact zero), because the step's gradient came
        from `torch.func.grad`, under which torch.compile ignores a custom backward. The step
        now differentiates with `torch.autograd.grad` (`grokpipe.train.gradients`), which
        compiles the custom backward as written."""
        if not (self.deterministic_gathers and torch.is_grad_enabled()):
            return gather_rows(table, index)
        return OneHotGradientGather.apply(table, index, self.matmul_dtype or table.dtype)

    def new_param(self, *shape: int) -> nn.Parameter:
        return nn.Parameter(torch.zeros(self.n_members, *shape))

    # parameter -> {dim (counting the member axis): the task's info key giving its size};
    # see `task_sized_dims` and `member_slices`
    TASK_SIZES: dict[str, dict[int, str]] = {}

    def init_member(
        self, i: int, gen: torch.Generator, init_scale: float = 1.0, info: dict | None = None
    ) -> None:
        """Fill member i's slice of every parameter, drawing only from `gen`.

        With `info` (the member's own task sizes), task-sized dims larger than the member's
        task (an ensemble padded to its largest vocabulary) get the member's own draw, the
        same as in a model of its size, and zeros beyond it."""
        with torch.no_grad():
            for name, param in self.named_parameters():
                where = self.member_slices(name, info)
                value = self.initial_value(name, tuple(param[i][where].shape), gen)
                if self.scaled_by_init_scale(name):
                    value = value * init_scale
                param[i].zero_()
                param[i][where].copy_(value.to(param.device, param.dtype))

    def member_slices(self, name: str, info: dict | None) -> tuple[slice, ...]:
        """Index of a member's own part of parameter `name` (without the member axis), for a
        member whose task sizes are `info`; everything when `info` is None."""
        sizes = self.TASK_SIZES.get(name, {})
        if info is None or not sizes:
            return (...,)
        ndim = max(sizes)
        return tuple(
            slice(0, info[sizes[d]]) if d in sizes else slice(None) for d in range(1, ndim + 1)
        )

    def initial_value(self, name: str, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
        raise NotImplementedError

    def scaled_by_init_scale(self, name: str) -> bool:
        """Omnigrok-style init scaling multiplies weights, not LayerNorm gains."""
        return True

    def layer_groups(self) -> list[tuple[str, list[str]]]:
        raise NotImplementedError

    def task_sized_dims(self) -> dict[str, tuple[int, ...]]:
        """Parameter dims (counting the member axis) whose size comes from the task, such as
        vocabulary and classes (`TASK_SIZES`). The engine compiles them as dynamic sizes, so
        tasks that differ only there (mod 97, S5, signed integers) share one compiled step."""
        return {name: tuple(sorted(dims)) for name, dims in self.TASK_SIZES.items()}

    def embedding_for_med(self, params: dict[str, Tensor]) -> Tensor | None:
        """[E, V, d] token embedding used by the mean-embedding-difference probe, if any."""
        return None

    def med_ranges(self, info: dict) -> list[list[int]] | None:
        """The row ranges [lo, hi) of `embedding_for_med` that the probe walks along, for a
        member whose task is `info`: the task's operand token ranges, unless the model reads
        its probe from rows of its own."""
        return info.get("med_ranges")


def uniform(shape, bound: float, gen: torch.Generator) -> Tensor:
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


def torch_linear_init(fan_in: int, shape, gen: torch.Generator) -> Tensor:
    """PyTorch's nn.Linear default (Kaiming-uniform with a=√5): U(−1/√fan_in, 1/√fan_in)."""
    return uniform(shape, 1.0 / math.sqrt(fan_in), gen)


def xavier_uniform(fan_in: int, fan_out: int, shape, gen: torch.Generator) -> Tensor:
    return uniform(shape, math.sqrt(6.0 / (fan_in + fan_out)), gen)


def gather_rows(table: Tensor, index: Tensor) -> Tensor:
    """Member e's rows `index[e]` of `table[e]`: table [E, U, ...], index [E, ...]."""
    E = table.shape[0]
    member = torch.arange(E, device=index.device).reshape(E, *([1] * (index.dim() - 1)))
    return table[member, index]


def one_hot_columns(index: Tensor, U: int, dtype: torch.dtype) -> Tensor:
    """[E, U, R] with a one where row r of member e is `index[e, r]` (R = the index's other
    elements, flattened). Built [E, U, R] so that the gradient's product reads it with R-row
    leading dimensions (aligned, for tensor-core kernels), not U rows (97 for mod 97)."""
    E = index.shape[0]
    flat = index.reshape(E, 1, -1)
    return (torch.arange(U, device=index.device).reshape(1, U, 1) == flat).to(dtype)


class OneHotGradientGather(torch.autograd.Function):
    """`gather_rows` forward; backward a product of the one-hot matrix with the rows'
    gradient, in `dtype`: each table row sums its rows' gradients in a fixed order."""

    @staticmethod
    def forward(table: Tensor, index: Tensor, dtype: torch.dtype) -> Tensor:
        return gather_rows(table, index)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        table, index, dtype = inputs
        ctx.save_for_backward(index)
        ctx.table_shape, ctx.table_dtype, ctx.dtype = table.shape, table.dtype, dtype

    @staticmethod
    def backward(ctx, grad: Tensor):
        (index,) = ctx.saved_tensors
        E, U = ctx.table_shape[0], ctx.table_shape[1]
        one_hot = one_hot_columns(index, U, ctx.dtype)
        rows = grad.reshape(E, one_hot.shape[-1], -1).to(ctx.dtype)
        table_grad = torch.bmm(one_hot, rows).reshape(ctx.table_shape).to(ctx.table_dtype)
        return table_grad, None, None


def bmm(x: Tensor, w: Tensor) -> Tensor:
    """Per-member matrix product: x [E, ..., in] @ w [E, in, out] -> [E, ..., out]."""
    lead = x.shape[1:-1]
    out = torch.bmm(x.reshape(x.shape[0], -1, x.shape[-1]), w)
    return out.reshape(x.shape[0], *lead, w.shape[-1])


def member_view(t: Tensor, ndim: int) -> Tensor:
    """Reshape a per-member [E] tensor to broadcast against an [E, ...] tensor of `ndim` dims."""
    return t.reshape(t.shape[0], *([1] * (ndim - 1)))
