"""CUDA-only checks of the compiled, graph-captured engine (run on a GPU machine; CI has none).

The CPU suite proves the engine's maths; these prove that torch.compile and CUDA-graph replay
compute the same thing as the eager step, and that ensembling stays exact enough on the GPU.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from grokpipe.train.ensemble import EngineOptions, EnsembleTrainer
from grokpipe.train.members import members_from_block

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def block(seeds, steps=150, precision="fp32"):
    return {
        "task": "arithmetic",
        "data": {"op": "x/y", "p": 31},
        "model": {"family": "transformer", "n_layers": 2, "d_model": 64, "n_heads": 4, "d_ff": 128},
        "train": {"steps": steps, "batch_size": 128, "precision": precision},
        "eval": {"every": 10, "log_points": 0},
        "grid": {"seed": seeds},
    }


def losses(members, **opts):
    t = EnsembleTrainer(members, EngineOptions(progress=False, **opts))
    t.run()
    return np.stack([r.metrics["train_loss"] for r in t.results()])


def test_compiled_graph_matches_eager_and_cpu():
    members = members_from_block(block([0, 1, 2]))
    cpu = losses(members, device="cpu")
    eager = losses(members, device="cuda")
    fast = losses(members, device="cuda", compile=True, cuda_graph=True)
    assert np.max(np.abs(eager - cpu) / cpu) < 1e-3
    assert np.max(np.abs(fast - eager) / eager) < 1e-3


def test_member_of_ensemble_matches_run_alone_on_gpu():
    members = members_from_block(block(list(range(8))))
    together = losses(members, device="cuda", compile=True, cuda_graph=True)
    alone = losses([members[5]], device="cuda", compile=True, cuda_graph=True)
    assert np.max(np.abs(together[5] - alone[0]) / alone[0]) < 1e-4


def test_a_later_process_loads_the_saved_step_and_trains_the_same():
    """A compiled step is saved (`grokpipe.train.precompiled`); a new process loads it from
    disk instead of tracing, and trains the same runs to the same losses as this process."""
    members = members_from_block(block([0, 1]))
    here = losses(members, device="cuda", compile=True, cuda_graph=True)
    code = f"""
import json
from grokpipe.train.ensemble import EngineOptions, EnsembleTrainer
from grokpipe.train.members import members_from_block
block = json.loads({json.dumps(block([0, 1]))!r})
opts = EngineOptions(progress=False, device="cuda", compile=True, cuda_graph=True)
t = EnsembleTrainer(members_from_block(block), opts)
t.run()
loss = [r.metrics["train_loss"].tolist() for r in t.results()]
print(json.dumps({{"from": t.timing.compiled_from, "loss": loss}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["from"] == {"train_step": "disk", "eval_chunk": "disk"}
    np.testing.assert_allclose(np.array(got["loss"]), here, rtol=1e-5)
