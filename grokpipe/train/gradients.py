"""The training step's gradients, by `torch.autograd.grad`, in a form torch.compile traces whole.

The step used `torch.func.grad` until the seventeenth session. Under torch.compile that
transform differentiates the forward as traced and ignores custom backwards
(`torch.autograd.Function`), so a gather could only get a deterministic gradient by computing
a one-hot product in the forward as well (~4 % of the large ensembles' step on an H100).
`torch.autograd.grad` computes the same gradients and, with dynamo's `trace_autograd_ops`
(torch ≥ 2.11), compiles into one graph with every custom backward as written. Eager (the CPU
path) it is plain autograd.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Tensor = torch.Tensor


def gradient_anchor(device: torch.device | str) -> Tensor:
    """The zero that `loss_gradients` differentiates through: a graph input that requires
    grad, made once per ensemble (see there)."""
    return torch.zeros((), device=device, requires_grad=True)


def loss_gradients(
    loss_fn: Callable[..., Tensor], params: dict[str, Tensor], anchor: Tensor, *args
) -> dict[str, Tensor]:
    """d loss_fn(params, *args) / d params, one tensor per parameter.

    The gradients are taken at `params[k] + anchor`, `anchor` being a zero that requires grad
    (`gradient_anchor`): the same values (only a -0.0 becomes +0.0), and tensors autograd can
    differentiate at, made inside the step. The obvious leaves, `p.detach().requires_grad_()`,
    compile on torch 2.13 but not on 2.11 (the GPU image's), whose dynamo refuses
    `requires_grad_` in a traced function; the parameters themselves stay plain tensors, so
    that the optimiser, checkpoints and evaluation handle them as before. Inside a compiled
    step the additions fuse into the kernels that read the weights."""
    with torch.enable_grad():
        leaves = {name: p + anchor for name, p in params.items()}
        loss = loss_fn(leaves, *args)
        grads = torch.autograd.grad(loss, tuple(leaves.values()))
    return dict(zip(leaves, grads))


def allow_compiled_gradients() -> None:
    """Let dynamo trace `torch.autograd.grad` into the compiled step (process-wide; set before
    a step is traced or a saved one loaded). Older torch would graph-break on it, which the
    engine's `fullgraph` compile turns into an error, so this one names the cause instead."""
    import torch._dynamo.config as dynamo_config

    if not hasattr(dynamo_config, "trace_autograd_ops"):
        raise RuntimeError(
            f"torch {torch.__version__} cannot compile the training step: it lacks dynamo's "
            "trace_autograd_ops (torch >= 2.11); set engine.compile: false or upgrade torch"
        )
    dynamo_config.trace_autograd_ops = True
