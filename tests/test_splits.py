"""Train/validation splits: disjoint, seeded, and the structured regions exactly as specified."""

from __future__ import annotations

import numpy as np
import pytest

from grokpipe.config.schema import ConfigError, from_dict
from grokpipe.tasks.arithmetic import OPERATIONS, build_table, operand_values
from grokpipe.tasks.arithmetic_task import ArithmeticData, ArithmeticTask
from grokpipe.tasks.splits import make_split


@pytest.fixture(scope="module")
def table():
    return build_table("x+y", 11)


def _check_indices(train, val, n):
    assert train.dtype.kind == "i" and val.dtype.kind == "i"
    assert len(np.unique(train)) == len(train)
    assert len(np.unique(val)) == len(val)
    assert np.intersect1d(train, val).size == 0
    assert train.min() >= 0 and val.min() >= 0
    assert train.max() < n and val.max() < n


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.77, 0.95])
def test_random_split_is_complete_disjoint_and_sized(table, fraction):
    n = len(table.x)
    train, val = make_split("random", table.x, table.y, fraction, None, seed=3)
    _check_indices(train, val, n)
    assert len(train) == round(fraction * n)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(n))


@pytest.mark.parametrize(
    ("name", "k"), [("random", None), ("strip", 4), ("rect", 5)], ids=["random", "strip", "rect"]
)
def test_splits_are_deterministic_in_the_seed(table, name, k):
    a = make_split(name, table.x, table.y, 0.5, k, seed=7)
    b = make_split(name, table.x, table.y, 0.5, k, seed=7)
    c = make_split(name, table.x, table.y, 0.5, k, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])  # a different seed draws another training set


@pytest.mark.parametrize("k", [0, 3, 9])
@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.9])
def test_strip_split(table, k, fraction):
    n = len(table.x)
    train, val = make_split("strip", table.x, table.y, fraction, k, seed=1)
    _check_indices(train, val, n)
    np.testing.assert_array_equal(np.sort(val), np.flatnonzero(table.x <= k))
    rest = np.flatnonzero(table.x > k)
    assert np.isin(train, rest).all()
    assert len(train) == round(fraction * len(rest))


@pytest.mark.parametrize("k", [0, 3, 9])
@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.9])
def test_rect_split(table, k, fraction):
    n = len(table.x)
    train, val = make_split("rect", table.x, table.y, fraction, k, seed=1)
    _check_indices(train, val, n)
    square = (table.x <= k) & (table.y <= k)
    np.testing.assert_array_equal(np.sort(val), np.flatnonzero(square))
    assert len(val) == (k + 1) ** 2
    rest = np.flatnonzero(~square)
    assert np.isin(train, rest).all()
    assert len(train) == round(fraction * len(rest))


def test_task_split_uses_the_config():
    task = ArithmeticTask()
    cfg = ArithmeticData(op="x-y", p=11, split="strip", train_fraction=0.4, k=2)
    data = task.build(cfg, seed=0)
    train, val = task.split(cfg, data, seed=5)
    x = data.extras["x"]
    np.testing.assert_array_equal(np.sort(val), np.flatnonzero(x <= 2))
    assert len(train) == round(0.4 * int((x > 2).sum()))
    again = task.split(cfg, data, seed=5)
    np.testing.assert_array_equal(train, again[0])


def _accepted_ks(op: str, p: int, split: str) -> list[int]:
    xs, _ = operand_values(OPERATIONS[op], p)
    accepted = []
    for k in range(int(xs.min()) - 1, int(xs.max()) + 2):
        try:
            from_dict(ArithmeticData, {"op": op, "p": p, "split": split, "k": k}, "data")
        except ConfigError:
            continue
        accepted.append(k)
    return accepted


@pytest.mark.parametrize("split", ["strip", "rect"])
@pytest.mark.parametrize("op", ["x+y", "x/y", "int_x-y"])
def test_every_accepted_k_gives_a_real_split(op, split):
    """The config refuses a k whose test region is empty or covers everything, so every k it
    accepts must leave both a training and a validation set."""
    p = 7
    task = ArithmeticTask()
    ks = _accepted_ks(op, p, split)
    assert ks, "some k must be accepted"
    for k in ks:
        cfg = ArithmeticData(op=op, p=p, split=split, train_fraction=0.5, k=k)
        data = task.build(cfg, seed=0)
        train, val = task.split(cfg, data, seed=0)
        assert len(val) > 0, f"{op} mod {p}, {split} k={k}: empty validation set"
        assert len(train) > 0, f"{op} mod {p}, {split} k={k}: empty training set"


@pytest.mark.parametrize("fraction", [0.01, 0.99])
def test_every_accepted_train_fraction_gives_a_real_split(fraction):
    """x+y mod 7 has 49 rows: a fraction that rounds to 0 or 49 training rows leaves one side
    empty, which the engine refuses only later, at training time. The config must refuse it."""
    data_block = {"op": "x+y", "p": 7, "split": "random", "train_fraction": fraction}
    try:
        cfg = from_dict(ArithmeticData, data_block, "data")
    except ConfigError as err:
        assert err.key == "data.train_fraction"
        return
    task = ArithmeticTask()
    train, val = task.split(cfg, task.build(cfg, seed=0), seed=0)
    assert len(train) > 0, f"train_fraction {fraction} accepted but leaves no training rows"
    assert len(val) > 0, f"train_fraction {fraction} accepted but leaves no validation rows"
