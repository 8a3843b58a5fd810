"""A tiny run through the training engine on the CPU: the loss falls, results have the shapes
the evaluation stage expects."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_engine import TINY_TRANSFORMER

from grokpipe.config.experiment import load_experiment
from grokpipe.tasks import TASKS
from grokpipe.train.ensemble import METRICS, EngineOptions, EnsembleTrainer, Member

STEPS = 200
EVERY = 50

PARAMS = {
    "experiments": {
        "smoke": {
            "task": "arithmetic",
            "data": {"op": "x+y", "p": 11, "split": "random", "train_fraction": 0.5},
            "model": dict(TINY_TRANSFORMER),
            "train": {
                "steps": STEPS,
                "batch_size": 64,
                "lr": 0.003,
                "weight_decay": 0.1,
                "warmup_steps": 10,
                "precision": "fp32",
            },
            "eval": {"every": EVERY, "log_points": 0},
            "grid": {"seed": [0, 1]},
        }
    }
}


def members(seeds=None) -> list[Member]:
    exp = load_experiment(PARAMS, "smoke")
    task = TASKS[exp.task]
    out = []
    for run in exp.runs:
        cfg = run.config
        if seeds is not None and cfg.seed not in seeds:
            continue
        data = task.build(cfg.data, cfg.seed)
        train_idx, val_idx = task.split(cfg.data, data, cfg.seed)
        out.append(Member(run.run_id, cfg, data, train_idx, val_idx))
    return out


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    trainer = EnsembleTrainer(members(), EngineOptions(device="cpu", progress=False), "smoke")
    trainer.run()
    return trainer


def test_training_loss_falls(trained):
    for res in trained.results():
        loss = res.metrics["train_loss"]
        assert np.isfinite(loss).all()
        first, last = loss[0], loss[-1]
        # at init the loss is about ln(13) ≈ 2.6; 200 steps must cut it by well over half
        assert first > 2.0, res.run_id
        assert last < 0.4 * first, (res.run_id, first, last)
        assert res.metrics["train_acc"][-1] > res.metrics["train_acc"][0]


def test_results_shapes(trained):
    results = trained.results(keep_params=True)
    assert [r.run_id for r in results] == ["r0000", "r0001"]
    expected_steps = list(range(0, STEPS + 1, EVERY))
    for res in results:
        assert res.steps.tolist() == expected_steps
        assert set(res.metrics) == set(METRICS)
        for name, values in res.metrics.items():
            assert values.shape == (len(expected_steps),), name
        for name in ("train_loss", "train_acc", "val_loss", "val_acc", "weight_norm"):
            assert np.isfinite(res.metrics[name]).all(), name
        for name in ("train_acc", "val_acc"):
            assert ((res.metrics[name] >= 0) & (res.metrics[name] <= 1)).all(), name
        assert set(res.final_params) == {n for n, _ in trained.model.named_parameters()}
        assert res.final_params["embed"].shape == (13, 32)
    assert trained.step_host == STEPS
    assert trained.timing.steps == STEPS
    # the two seeds are two different runs
    a, b = results
    assert not np.array_equal(a.metrics["train_loss"], b.metrics["train_loss"])


def test_a_run_alone_matches_the_same_run_in_an_ensemble(trained):
    """Seeded per run: member r0001 trained alone reproduces its history in the ensemble."""
    alone = EnsembleTrainer(members(seeds={1}), EngineOptions(device="cpu", progress=False))
    alone.run()
    (solo,) = alone.results()
    in_ensemble = trained.results()[1]
    assert solo.run_id == in_ensemble.run_id == "r0001"
    for name in ("train_loss", "val_loss", "weight_norm"):
        np.testing.assert_allclose(
            solo.metrics[name], in_ensemble.metrics[name], rtol=1e-4, atol=1e-5
        )


def test_each_gpu_worker_sees_only_its_own_gpu():
    from grokpipe.train.runner import worker_visible_devices

    assert worker_visible_devices("cuda:1", None) == "1"
    assert worker_visible_devices("cuda:0", "") == "0"
    # an inherited narrowing keeps its own numbering (or UUIDs)
    assert worker_visible_devices("cuda:1", "2, 5") == "5"
    assert worker_visible_devices("cuda:0", "GPU-ab12,GPU-cd34") == "GPU-ab12"


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for GPUs a CPU machine lacks")
def test_gpus_asked_for_on_a_machine_without_them_is_a_params_error():
    """One line naming engine.devices (a ConfigError, which a stage prints as one line and
    exits 2), not a traceback."""
    from grokpipe.config.schema import ConfigError
    from grokpipe.train.runner import EngineConfig

    with pytest.raises(ConfigError, match=r"^engine\.devices: asks for GPUs \[5\]"):
        EngineConfig(devices=[5]).device_names()


@pytest.mark.parametrize(("devices", "reason"), [([], "names no device"), ([0, 0], "twice")])
def test_an_empty_or_repeating_device_list_is_a_params_error(devices, reason):
    from grokpipe.config.schema import ConfigError, from_dict
    from grokpipe.train.runner import EngineConfig

    with pytest.raises(ConfigError, match=rf"^engine\.devices: .*{reason}"):
        from_dict(EngineConfig, {"devices": devices}, "engine")
