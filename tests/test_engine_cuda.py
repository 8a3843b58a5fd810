"""CUDA-only checks of the compiled, graph-captured engine (run on a GPU machine; CI has none).

The CPU suite proves the engine's maths; these prove that torch.compile and CUDA-graph replay
compute the same thing as the eager step, and that ensembling stays exact enough on the GPU.
"""

import numpy as np
import pytest
import torch
from fresh_process import train_in_new_process
from test_parity import tiny_block

from grokpipe.train.ensemble import EngineOptions, EnsembleTrainer
from grokpipe.train.members import members_from_block

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


# the step as `dvc repro` compiles it on a GPU (the engine block's defaults)
PIPELINE = {
    "device": "cuda",
    "compile": True,
    "cuda_graph": True,
    "combo_kernels": True,
    "deterministic": True,
}


def test_compiled_graph_matches_eager_and_cpu():
    members = members_from_block(block([0, 1, 2]))
    cpu = losses(members, device="cpu")
    eager = losses(members, device="cuda")
    fast = losses(members, **PIPELINE)
    assert np.max(np.abs(eager - cpu) / cpu) < 1e-3
    assert np.max(np.abs(fast - eager) / eager) < 1e-3


def test_member_of_ensemble_matches_run_alone_on_gpu():
    members = members_from_block(block(list(range(8))))
    together = losses(members, **PIPELINE)
    alone = losses([members[5]], **PIPELINE)  # one run: compiled without combo kernels
    assert np.max(np.abs(together[5] - alone[0]) / alone[0]) < 1e-4


def test_a_later_process_loads_the_saved_step_and_trains_the_same():
    """A compiled step is saved (`grokpipe.train.precompiled`); a new process loads it from
    disk instead of tracing, and trains the same runs to the same losses as this process."""
    members = members_from_block(block([0, 1]))
    here = losses(members, device="cuda", compile=True, cuda_graph=True)
    source, loss = train_in_new_process(block([0, 1]), device="cuda", compile=True, cuda_graph=True)
    assert source == {"train_step": "disk", "eval_chunk": "disk"}
    np.testing.assert_allclose(loss, here, rtol=1e-5)


def test_jobs_side_by_side_on_one_gpu_train_as_in_turn(tmp_path):
    """Two jobs (mod 31 and mod 37, kept apart by `pad_task_sizes: false`) replay their CUDA
    graphs on two streams at once (`engine.jobs_per_device`), and train as they do one after
    the other."""
    from grokpipe.train.runner import EngineConfig, train_members

    spec = block([0, 1])
    spec["grid"] = {"data.p": [31, 37], "seed": [0, 1]}
    members = members_from_block(spec)
    runs = {}
    for slots in (1, 2):
        engine = EngineConfig(
            devices=[0], progress=False, jobs_per_device=slots, pad_task_sizes=False
        )
        runs[slots], timings = train_members(members, engine, tmp_path / str(slots), "t")
        assert len(timings) == 2
    for m in members:
        a, b = runs[1][m.run_id].metrics, runs[2][m.run_id].metrics
        np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=1e-4)
        np.testing.assert_allclose(b["val_acc"], a["val_acc"], atol=1e-3)


def test_worker_processes_train_as_the_stage_process(tmp_path):
    """The several-GPU path (one spawned worker process per device, jobs dealt through a
    queue, results gathered from the checkpoint folder) trains the runs as the single-device
    path does inside the stage's own process. Two workers share this GPU (`devices: [0, 0]`):
    the lent machines have one GPU, and without this the multi-worker path would only run
    where two are lent."""
    from grokpipe.train.runner import EngineConfig, train_members

    spec = block([0, 1])
    spec["grid"] = {"data.p": [31, 37], "seed": [0, 1]}
    members = members_from_block(spec)
    runs = {}
    for devices in ([0], [0, 0]):
        engine = EngineConfig(
            devices=devices, progress=False, jobs_per_device=1, pad_task_sizes=False
        )
        runs[len(devices)], timings = train_members(
            members, engine, tmp_path / str(len(devices)), "t"
        )
        assert len(timings) == 2
    assert set(runs[2]) == {m.run_id for m in members}
    for m in members:
        a, b = runs[1][m.run_id].metrics, runs[2][m.run_id].metrics
        np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=1e-5)
        np.testing.assert_allclose(b["val_acc"], a["val_acc"], atol=1e-6)


def parity_block(seeds, steps=150):
    return {**tiny_block(steps), "eval": {"every": 10, "log_points": 0}, "grid": {"seed": seeds}}


def padded_block(seeds):
    spec = block(seeds)
    # S5 pads mod 31's vocabulary; ops alternate, so any two runs on are a padded ensemble
    spec["grid"] = {"seed": seeds, "data.op": ["x/y", "s5"]}
    return spec


@pytest.mark.parametrize("family", ["transformer", "padded transformer", "mlp"])
def test_combo_kernel_step_matches_eager_at_several_sizes(family):
    """The compiled step as the pipeline runs it (combo kernels, dynamic sizes, CUDA graph)
    against eager, for ensembles of several sizes that share one compile. A combined kernel
    that read out of bounds at some size would show as a diverging loss there."""
    make = {"transformer": block, "padded transformer": padded_block, "mlp": parity_block}
    members = members_from_block(make[family](list(range(13))))
    for size in (2, 3, 8, 13):
        some = members[:size]
        eager = losses(some, device="cuda")
        fast = losses(some, **PIPELINE)
        assert np.max(np.abs(fast - eager) / np.maximum(eager, 1e-6)) < 1e-3, size


def test_deterministic_gathers_train_to_the_same_bits_twice():
    """The pipeline's GPU step with its deterministic gathers (bf16; shared prefixes, which a
    4-run ensemble takes here only because it is asked to, for their key/value gathers) trains
    the same runs to bit-identical histories twice in a row, and early on to the curves of
    indexed gathers (`engine.deterministic: false`), whose atomic adds make two trainings
    differ (which is why the option exists: if they stopped differing, it would be worth
    re-timing)."""
    members = members_from_block(block([0, 1, 2, 3], steps=300, precision="bf16"))

    def history(**opts):
        options = {**PIPELINE, "progress": False, "prefix_min_members": 1, **opts}
        t = EnsembleTrainer(members, EngineOptions(**options))
        assert t.prefix_len == 2
        assert t.run() == "done"
        return t.history.cpu()

    first, second = history(), history()
    assert torch.equal(first, second)
    plain = history(deterministic=False)
    # the curves agree early, before the runs' chaotic dynamics amplify the summation order
    early = slice(0, 10)
    assert torch.allclose(first[early], plain[early], rtol=1e-2, atol=1e-2)
