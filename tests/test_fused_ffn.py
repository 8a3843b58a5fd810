"""The fused FFN kernels (`grokpipe.kernels.fused_ffn`) compute the block and its gradients as
PyTorch does, run here in Triton's CPU interpreter (the kernels' arithmetic, not their speed)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="the fused kernels are Triton kernels (test extra)")

ROOT = Path(__file__).resolve().parents[1]

# Three members, 40 rows (a partial last tile), d 32, d_ff 128 (two hidden chunks); each value
# against PyTorch's autograd of `reference_ffn`, and member 1 against itself computed alone.
CHECK = textwrap.dedent(
    """
    import torch
    from grokpipe.kernels.fused_ffn import ffn_backward, ffn_forward, reference_ffn

    gen = torch.Generator().manual_seed(0)
    E, R, D, F = 3, 40, 32, 128
    bf = torch.bfloat16
    x = torch.randn(E, R, D, generator=gen).to(bf)
    w1 = (torch.randn(E, D, F, generator=gen) / D**0.5).to(bf)
    w2 = (torch.randn(E, F, D, generator=gen) / F**0.5).to(bf)
    b1 = torch.randn(E, F, generator=gen) * 0.1
    b2 = torch.randn(E, D, generator=gen) * 0.1
    g = torch.randn(E, R, D, generator=gen)
    leaves = [t.clone().requires_grad_() for t in (x, w1, b1, w2, b2)]
    out = reference_ffn(*leaves)
    out.backward(g)
    fused = [ffn_forward(x, w1, b1, w2, b2), *ffn_backward(x, w1, b1, w2, g)]
    want = [out.detach(), *(t.grad for t in leaves)]
    for name, a, b in zip(["out", "dx", "dW1", "db1", "dW2", "db2"], fused, want):
        assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, b.dtype)
        rel = ((a.float() - b.float()).norm() / b.float().norm()).item()
        print(name, rel)
        assert rel < 1e-3, (name, rel)
    one = [ffn_forward(*(t[1:2] for t in (x, w1, b1, w2, b2)))]
    one += ffn_backward(*(t[1:2] for t in (x, w1, b1, w2, g)))
    for a, b in zip(one, fused):
        assert torch.equal(a, b[1:2])
    print("ok")
    """
)


def run_in_interpreter(script: str) -> None:
    """Run `script` in a new Python whose Triton kernels run in the CPU interpreter (read when
    they are defined, so not in this process); it must print "ok" last."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("ok")


def test_fused_ffn_matches_pytorch_in_the_interpreter():
    run_in_interpreter(CHECK)


def test_fused_ffn_names_a_bad_shape():
    from grokpipe.kernels.fused_ffn import ffn_forward

    x = torch.zeros(2, 8, 32, dtype=torch.bfloat16)
    w1 = torch.zeros(2, 32, 100, dtype=torch.bfloat16)  # d_ff not a multiple of the chunk
    w2 = torch.zeros(2, 100, 32, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="d_ff 100"):
        ffn_forward(x, w1, torch.zeros(2, 100), w2, torch.zeros(2, 32))
    with pytest.raises(ValueError, match="b2 is"):
        ffn_forward(x, w1[..., :64], torch.zeros(2, 64), w2[:, :64], torch.zeros(3, 32))


# Two runs trained 8 steps in bfloat16, with and without the fused FFN (eager, then traced
# as the step is on a GPU, with the "aot_eager" backend): the same curves to rounding.
TRAIN = textwrap.dedent(
    """
    import sys
    import warnings
    import numpy as np
    from grokpipe.train.ensemble import EngineOptions, EnsembleTrainer
    from grokpipe.train.members import members_from_block

    block = {
        "task": "arithmetic",
        "data": {"op": "x+y", "p": 13},
        "model": {"family": "transformer", "n_layers": 2, "d_model": 32, "n_heads": 4, "d_ff": 64},
        "train": {"steps": 8, "batch_size": 32, "precision": "bf16", "lr": 0.003},
        "eval": {"every": 4, "log_points": 0},
        "grid": {"seed": [0, 1]},
    }

    def losses(**opts):
        trainer = EnsembleTrainer(members_from_block(block), EngineOptions(progress=False, **opts))
        assert trainer.model.fused_ffn is opts.get("fused_ffn", False)
        trainer.run()
        return np.stack([r.metrics["train_loss"] for r in trainer.results()])

    plain = losses()
    for opts in ({}, {"compile": True, "compile_backend": "aot_eager"}):
        fused = losses(fused_ffn=True, **opts)
        rel = np.abs(fused - plain).max() / np.abs(plain).max()
        print(opts, rel)
        assert rel < 1e-2, rel  # not the same code, the same arithmetic
    # asked for where it cannot apply: the usual FFN, and a warning that says why
    block["model"]["activation"] = "relu"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = EnsembleTrainer(
            members_from_block(block), EngineOptions(progress=False, fused_ffn=True)
        )
    assert not trainer.model.fused_ffn
    assert any("activation is relu" in str(w.message) for w in caught), caught
    print("ok")
    """
)


def test_engine_trains_with_the_fused_ffn_in_the_interpreter():
    run_in_interpreter(TRAIN)


def test_fused_ffn_is_a_cuda_engine_option_checked_as_a_boolean():
    from grokpipe.config.schema import ConfigError
    from grokpipe.config.validate import engine_config
    from grokpipe.train.runner import EngineConfig

    assert not EngineConfig().options("cuda:0").fused_ffn  # off unless asked for
    assert EngineConfig(fused_ffn=True).options("cuda:0").fused_ffn
    assert not EngineConfig(fused_ffn=True).options("cpu").fused_ffn
    with pytest.raises(ConfigError, match="engine.fused_ffn"):
        engine_config({"engine": {"fused_ffn": "yes"}})
