"""Seed 003's parity task, its runs through the engine (freezing, rate limiting) and the
verdicts computed from run tables."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from grokpipe.analysis import ANALYSES
from grokpipe.analysis import parity as verdicts
from grokpipe.config.experiment import load_experiment
from grokpipe.config.schema import ConfigError, from_dict
from grokpipe.tasks import TASKS
from grokpipe.train.ensemble import EngineOptions, EnsembleTrainer
from grokpipe.train.members import build_members

TASK = TASKS["parity"]


def data_cfg(**kw):
    return from_dict(TASK.Config, kw, "data")


def build(seed=0, **kw):
    cfg = data_cfg(**kw)
    data = TASK.build(cfg, seed)
    return cfg, data, *TASK.split(cfg, data, seed)


# --- datasets ----------------------------------------------------------------------------------


def test_hidden_labels_are_brute_force_products():
    cfg, data, tr, va = build(seed=3, n=12, k=3, n_train=200, n_val=50)
    x = data.inputs
    assert x.shape == (250, 12) and x.dtype == np.float32
    assert set(np.unique(x)) == {-1.0, 1.0}
    for row, y in zip(x, data.targets):
        prod = 1.0
        for v in row[:3]:
            prod *= v
        assert y == prod
    assert data.targets.dtype == np.float32
    assert data.info == {"input_dim": 12, "n_classes": 1}
    assert list(tr) == list(range(200)) and list(va) == list(range(200, 250))
    # rows are distinct, so no validation example is also a training example
    assert len({r.tobytes() for r in x}) == len(x)


def test_labels_depend_on_the_bits_outside_k_not_at_all():
    cfg, data, *_ = build(seed=0, n=8, k=2, n_train=100, n_val=20)
    flipped = data.inputs.copy()
    flipped[:, 2:] *= -1
    assert np.array_equal(verdict_free_parity(flipped, 2), data.targets)


def verdict_free_parity(x, k):
    return np.prod(x[:, :k], axis=1)


def test_data_depend_on_the_seed_and_are_reproducible():
    cfg = data_cfg(n=20, n_train=50, n_val=10)
    a, b, a2 = TASK.build(cfg, 0), TASK.build(cfg, 1), TASK.build(cfg, 0)
    assert not np.array_equal(a.inputs, b.inputs)
    assert np.array_equal(a.inputs, a2.inputs)
    assert TASK.dataset_key(cfg, 0) != TASK.dataset_key(cfg, 1)
    assert TASK.dataset_key(cfg, 0) == TASK.dataset_key(data_cfg(n=20, n_train=50, n_val=10), 0)


def test_pool_keeps_shapes_equal_and_training_sets_nested():
    small = build(seed=2, n=16, n_train=30, n_val=10, pool=80)
    large = build(seed=2, n=16, n_train=70, n_val=10, pool=80)
    assert small[1].shape_signature() == large[1].shape_signature()
    assert np.array_equal(small[1].inputs, large[1].inputs)
    assert np.array_equal(small[3], large[3])  # one validation set per seed
    assert set(small[2]) < set(large[2])  # nested training sets
    assert not set(large[2]) & set(large[3])


def test_known_k_one_hot_and_held_out_k_are_disjoint():
    cfg, data, tr, va = build(
        seed=1, variant="known", n=10, k_train=[2, 3, 4], k_val=[6, 7], k_max=8,
        n_train=300, n_val=60,
    )  # fmt: skip
    x = data.inputs
    assert x.shape == (360, 18) and data.info["input_dim"] == 18
    one_hot, bits = x[:, :8], x[:, 8:]
    assert np.all(one_hot.sum(1) == 1)
    k = one_hot.argmax(1) + 1
    assert np.array_equal(k, data.extras["k"])
    assert set(k[tr]) == {2, 3, 4}
    assert set(k[va]) == {6, 7}
    assert not set(k[tr]) & set(k[va])
    for row, kk, y in zip(bits, k, data.targets):
        assert y == np.prod(row[:kk])


def test_known_k_rejects_overlapping_k_sets():
    with pytest.raises(ConfigError, match=r"data\.k_val.*disjoint"):
        data_cfg(variant="known", n=10, k_train=[2, 3], k_val=[3])
    with pytest.raises(ConfigError, match=r"data\.k_max"):
        data_cfg(variant="known", n=10, k_train=[2, 3], k_val=[6], k_max=4)


def test_known_k_draws_at_most_every_distinct_row_of_a_k():
    """Near the limit (14 training rows over k = 2, 3 on 3 bits: 8 distinct rows each) a
    random share of rows per k could ask one k for more than 8 distinct rows, and drawing
    them never ended: each k now takes at most 2^n rows."""
    for seed in range(20):
        _, data, tr, _ = build(
            seed=seed, variant="known", n=3, k_train=[2, 3], k_val=[1], k_max=3,
            n_train=14, n_val=2,
        )  # fmt: skip
        k = data.extras["k"][tr]
        assert max(np.bincount(k)) <= 8
        bits = data.extras["bits"][tr]
        for v in (2, 3):
            assert len({r.tobytes() for r in bits[k == v]}) == (k == v).sum()


def test_peek_labels_multiply_the_extra_bit_on_pattern_rows():
    cfg, data, *_ = build(
        seed=4, variant="peek", n=12, k=3, peek_pattern=[1, 1, -1], n_train=800, n_val=200
    )
    x = data.inputs
    hit = (x[:, 0] == 1) & (x[:, 1] == 1) & (x[:, 2] == -1)
    assert np.array_equal(hit, data.extras["peek"])
    assert 0.08 < hit.mean() < 0.17  # one row in eight
    parity = np.prod(x[:, :3], axis=1)
    assert np.array_equal(data.targets[~hit], parity[~hit])
    assert np.array_equal(data.targets[hit], parity[hit] * x[hit, 4])  # x[k + 1]
    # the plain k-parity is wrong on about half of the pattern rows and nowhere else
    wrong = parity != data.targets
    assert not wrong[~hit].any() and 0.3 < wrong[hit].mean() < 0.7
    assert verdicts.plateau_level(3) == 1 - 1 / 16


def test_peek_rejects_an_extra_bit_inside_the_parity():
    with pytest.raises(ConfigError, match=r"data\.peek_at"):
        data_cfg(variant="peek", n=12, k=3, peek_at=1)
    with pytest.raises(ConfigError, match=r"data\.peek_pattern"):
        data_cfg(variant="peek", n=12, k=3, peek_pattern=[1, 0])


def test_too_few_bits_for_distinct_rows_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data\.n"):
        data_cfg(n=5, n_train=40, n_val=10)


# --- through the engine ------------------------------------------------------------------------


def tiny_block(steps=300, **train):
    return {
        "task": "parity",
        "data": {"variant": "hidden", "n": 10, "k": 2, "n_train": 200, "n_val": 50},
        "model": {"family": "mlp", "hidden": [32], "init": "xavier"},
        "train": {
            "steps": steps,
            "optimizer": "sgd",
            "lr": 0.1,
            "weight_decay": 0.01,
            "batch_size": 32,
            "loss": "hinge",
            "warmup_steps": 0,
            "precision": "fp32",
            **train,
        },
        "eval": {"every": 100, "log_points": 0},
    }


def trainer(block, seeds=(0,)):
    block = {**block, "grid": {"seed": list(seeds)}}
    exp = load_experiment({"experiments": {"t": block}}, "t")
    return EnsembleTrainer(build_members(exp), EngineOptions(progress=False))


def test_tiny_parity_run_loss_falls():
    t = trainer(tiny_block(steps=400), seeds=(0, 1))
    t.run()
    for r in t.results():
        loss = r.metrics["train_loss"]
        assert loss[-1] < 0.5 * loss[0]
        assert r.metrics["train_acc"][-1] > 0.9


def snapshot(t):
    return {k: v.clone() for k, v in t.params.items()}


def test_frozen_first_layer_never_changes():
    t = trainer(tiny_block(steps=50, layers={"first": {"frozen": True}}))
    before = snapshot(t)
    t.run()
    assert torch.equal(t.params["w0"], before["w0"])
    assert torch.equal(t.params["b0"], before["b0"])
    assert not torch.equal(t.params["w1"], before["w1"])


def test_rate_limited_layer_updates_only_on_its_period():
    t = trainer(tiny_block(steps=50, layers={"first": {"period": 4}}))
    before = snapshot(t)
    for _ in range(3):
        t._train_step()
    assert torch.equal(t.params["w0"], before["w0"])  # steps 1..3: not due
    assert not torch.equal(t.params["w1"], before["w1"])  # the last layer trains every step
    t._train_step()
    assert not torch.equal(t.params["w0"], before["w0"])  # step 4: due


def test_rate_limiting_grid_expresses_both_directions():
    block = tiny_block()
    block["grid"] = [
        {"train.layers.first.period": [1, 4], "train.layers.last.period": [1], "seed": [0]},
        {"train.layers.first.period": [1], "train.layers.last.period": [4], "seed": [0]},
    ]
    exp = load_experiment({"experiments": {"rl": block}}, "rl")
    layers = [r.config.train.layers for r in exp.runs]
    assert [(d["first"].period, d["last"].period) for d in layers] == [(1, 1), (4, 1), (1, 4)]
    members = build_members(exp)
    t = EnsembleTrainer(members, EngineOptions(progress=False))  # one stacked ensemble
    assert t.E == 3


# --- verdicts on synthetic tables --------------------------------------------------------------


def fake_exp(steps=10_000, **data):
    cfg = SimpleNamespace(
        train=SimpleNamespace(steps=steps),
        data=SimpleNamespace(**data),
        model=SimpleNamespace(hidden=[200]),
    )
    return SimpleNamespace(name="fake", runs=[SimpleNamespace(run_id="r0000", config=cfg)])


def rows(cond: dict, grok: list, mem: list | None = None, val=None):
    mem = mem or [1000] * len(grok)
    out = []
    for i, (g, m) in enumerate(zip(grok, mem)):
        out.append(
            {
                **cond,
                "seed": i,
                "grokked_at": g,
                "memorized_at": m,
                "final_val_acc": 1.0 if g is not None else (val if val is not None else 0.5),
                "final_train_acc": 1.0,
            }
        )
    return out


def table(*groups) -> pd.DataFrame:
    t = pd.DataFrame([r for g in groups for r in g])
    t["run_id"] = [f"r{i:04d}" for i in range(len(t))]
    for c in ("grokked_at", "memorized_at"):
        t[c] = t[c].astype(float)
    return t


def test_median_counts_never_grokked_as_infinite():
    assert verdicts.median_steps([100, None, 300]) == 300
    assert math.isinf(verdicts.median_steps([100, None, None]))
    assert verdicts.median_steps([100, 300]) == 200


def test_grokking_verdict():
    t = table(rows({}, [5000, 4000, 6000], [1500, 2000, 1800]))
    r = ANALYSES["parity_grokking"](fake_exp(), t, None)
    assert r["verdict"].startswith("grokking: 3/3 seeds memorise")
    assert "median step 5,000" in r["verdict"] and r["delayed_seeds"] == 3
    t = table(rows({}, [1100, None, None], [1000, 1000, 1000]))
    r = ANALYSES["parity_grokking"](fake_exp(), t, None)
    assert r["verdict"].startswith("no grokking") and r["delayed_seeds"] == 0


def test_data_size_verdict():
    t = table(
        rows({"n_train": 220}, [None, None, None]),
        rows({"n_train": 660}, [9000, None, 12000]),
        rows({"n_train": 1100}, [4000, 5000, 6000]),
    )
    r = ANALYSES["parity_data_size"](fake_exp(20_000), t, None)
    assert r["all_seeds_grok_from"] == 1100
    assert r["verdict"].startswith("every seed groks from n_train = 1100")
    assert "no seed groks at n_train ≤ 220" in r["verdict"]
    assert r["per_size"]["660"]["grokked"] == 2


def test_data_size_verdict_claims_only_what_every_size_shows():
    """A size that groks in every seed below one that does not gives no "from" threshold
    (it used to raise StopIteration), and "no seed groks at ≤ n" holds for every size up
    to n, not only for n (220 groks once here, so there is no such n)."""
    t = table(
        rows({"n_train": 220}, [9000, None, None]),
        rows({"n_train": 440}, [None, None, None]),
        rows({"n_train": 660}, [5000, 6000, 7000]),
        rows({"n_train": 1100}, [4000, None, 6000]),
    )
    r = ANALYSES["parity_data_size"](fake_exp(20_000), t, None)
    assert r["all_seeds_grok_from"] is None
    assert r["verdict"].startswith("every seed groks only at n_train = 660, not at every larger")
    assert "no seed groks at" not in r["verdict"]


def test_frozen_first_layer_verdict_per_depth():
    t = table(
        rows({"hidden": "[200]", "frozen": True}, [None, None, None], val=0.52),
        rows({"hidden": "[200]", "frozen": False}, [5000, 6000, 7000]),
        rows({"hidden": "[200, 200]", "frozen": True}, [7000, 8000, 9000]),
        rows({"hidden": "[200, 200]", "frozen": False}, [6000, 6000, 7000]),
    )
    r = ANALYSES["parity_frozen_first_layer"](fake_exp(), t, None)
    assert r["feature_learning"] == ["needed", "not needed"]
    assert "1 hidden layer: random features (first layer frozen) 0/3 grok" in r["verdict"]
    assert "(final train 1.00, val 0.52)" in r["verdict"]
    assert "2 hidden layers" in r["verdict"]


def test_frozen_first_layer_verdict_when_nothing_groks_is_undetermined():
    t = table(
        rows({"hidden": "[200]", "frozen": True}, [None, None, None]),
        rows({"hidden": "[200]", "frozen": False}, [5000, None, None]),
    )
    r = ANALYSES["parity_frozen_first_layer"](fake_exp(), t, None)
    assert r["feature_learning"] == [
        "undetermined (neither frozen nor trained runs grok in most seeds)"
    ]


def test_rate_limiting_verdict_compares_directions():
    f, l_ = "train.layers.first.period", "train.layers.last.period"
    t = table(
        rows({f: 1, l_: 1}, [5000, 5000, 6000]),
        rows({f: 4, l_: 1}, [16000, None, 18000]),
        rows({f: 16, l_: 1}, [None, None, None]),
        rows({f: 1, l_: 4}, [6000, 6500, 7000]),
        rows({f: 1, l_: 16}, [9000, 11000, 12000]),
    )
    r = ANALYSES["parity_rate_limiting"](fake_exp(20_000), t, None)
    assert r["first_hurts_more_at"] == 2 and r["last_hurts_more_at"] == 0
    assert r["verdict"].startswith("slowing the first layer hurts more at 2/2 periods")
    assert "coordination hypothesis supported" in r["verdict"]  # ×16 last: 11,000 ≥ 2×5,000
    assert r["first"]["16"]["grokked"] == 0
    assert r["last"]["4"]["delays_grokking"] is False


def test_rate_limiting_verdict_half_supported():
    f, l_ = "train.layers.first.period", "train.layers.last.period"
    t = table(
        rows({f: 1, l_: 1}, [5000, 5000, 6000]),
        rows({f: 8, l_: 1}, [None, None, None]),
        rows({f: 1, l_: 8}, [5000, 6000, 6000]),
    )
    r = ANALYSES["parity_rate_limiting"](fake_exp(), t, None)
    assert "only early-layer slowing delays grokking" in r["verdict"]


def test_rate_limiting_with_a_baseline_that_does_not_grok_compares_seed_counts_only():
    """Baseline median never (1/3 seeds): a slowed condition like it delays nothing, and
    its slowdown is undefined (it printed "0.0×")."""
    f, l_ = "train.layers.first.period", "train.layers.last.period"
    t = table(
        rows({f: 1, l_: 1}, [5000, None, None]),
        rows({f: 4, l_: 1}, [4000, None, None]),
        rows({f: 1, l_: 4}, [None, None, None]),
    )
    r = ANALYSES["parity_rate_limiting"](fake_exp(), t, None)
    assert r["first"]["4"]["delays_grokking"] is False
    assert r["first"]["4"]["slowdown"] is None
    assert r["last"]["4"]["delays_grokking"] is True  # fewer seeds grok
    assert "0.0×" not in r["verdict"] and "(n/a)" in r["verdict"]
    assert "only late-layer slowing delays grokking" in r["verdict"]


def test_init_scale_verdict():
    t = table(
        rows({"init_scale": 0.1}, [1200, 1300, 1100], [1100, 1200, 1000]),
        rows({"init_scale": 1.0}, [5000, 5200, 6000], [1500, 1800, 2000]),
        rows({"init_scale": 3.0}, [None, None, None], [800, 900, 900]),
    )
    r = ANALYSES["parity_init_scale"](fake_exp(), t, None)
    assert r["removes_grokking"] is True
    assert r["verdict"].startswith("small init removes grokking: median delay 100 at ×0.1")
    assert r["delay_rank_corr"] == 1.0  # 100 < 3,300 < never
    assert "the delay rises with the init scale (Spearman ρ = +1.00)" in r["verdict"]
    t = table(
        rows({"init_scale": 0.1}, [None, None, None], [None, None, None]),
        rows({"init_scale": 1.0}, [5000, 5200, 6000], [1500, 1800, 2000]),
    )
    r = ANALYSES["parity_init_scale"](fake_exp(), t, None)
    assert r["removes_grokking"] is False


def test_double_grokking_verdict_from_curves():
    steps = np.arange(0, 10_001, 500)

    def curve(s1, s2):
        return np.where(steps >= s2, 1.0, np.where(steps >= s1, 0.94, 0.55))

    hist = pd.concat(
        [
            pd.DataFrame({"run_id": "r0000", "step": steps, "val_acc": curve(2000, 6000)}),
            pd.DataFrame({"run_id": "r0001", "step": steps, "val_acc": curve(2500, 7000)}),
            pd.DataFrame({"run_id": "r0002", "step": steps, "val_acc": curve(3000, 3000)}),
        ]
    )
    exp = fake_exp(peek_pattern=[1, 1, -1])
    r = verdicts.parity_double_grokking(exp, pd.DataFrame(), history=hist)
    assert r["double_grokking_seeds"] == 2
    assert r["per_run"]["r0000"] == {
        "stage1_step": 2000,
        "stage2_step": 6000,
        "stage_ratio": 3.0,
        "double_grokking": True,
        "plateau_val_acc": 0.94,
    }
    assert r["per_run"]["r0002"]["double_grokking"] is False  # one jump straight to 100 %
    assert r["verdict"].startswith(
        "double grokking (the peek rule learned at ≥ 1.5× the step the plateau was reached"
    )
    assert "in 2/3 seeds" in r["verdict"]


def test_passing_through_the_plateau_level_is_not_double_grokking():
    steps = np.arange(0, 5001, 200)
    val = np.clip(0.5 + (steps - 2600) / 2000, 0.5, 1.0)  # one steady rise, 0.89 → 1 in 1,000
    hist = pd.DataFrame({"run_id": "r0000", "step": steps, "val_acc": val})
    r = verdicts.parity_double_grokking(fake_exp(peek_pattern=[1, 1, -1]), None, history=hist)
    run = r["per_run"]["r0000"]
    assert run["stage1_step"] == 3400 and run["stage2_step"] == 3600
    assert r["double_grokking_seeds"] == 0
    assert r["verdict"].startswith("no double grokking")


def test_known_k_verdict():
    t = table(rows({}, [None, None, None], val=0.49))
    r = ANALYSES["parity_known_k"](fake_exp(k_train=[2, 3], k_val=[6]), t, None)
    assert r["verdict"].startswith("no extrapolation to held-out k=[6]: 0/3 seeds")
    assert "chance level" in r["verdict"]
