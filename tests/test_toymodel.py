"""The pattern toy model (seed 000): exact formulas against the seed's own code, against the
literal sum over firing sets, and against a Monte-Carlo simulation of the Bernoulli events;
and the paper's checked values."""

from __future__ import annotations

import numpy as np
import pytest

from grokpipe.analysis.toymodel import (
    Pattern,
    accuracies,
    accuracies_by_subsets,
    heldout_probability,
    simulate,
)
from grokpipe.analysis.toyshape import describe, paper_checks

T = np.arange(0, 300, dtype=float)


# --- the seed's code, verbatim apart from layout: the reference for three patterns -----------
def seed_pred_i(p, t):
    return p["gamma"] / (1 + np.exp(-p["alpha"] * (t - p["b"])))


def seed_acc(p_1, p_2, p_3, t):
    preds = [seed_pred_i(p_1, t), seed_pred_i(p_2, t), seed_pred_i(p_3, t)]
    return (
        preds[0] + preds[1] + preds[2]
        - preds[0] * preds[1] - preds[0] * preds[2] - preds[1] * preds[2]
        + preds[0] * preds[1] * preds[2]
    )  # fmt: skip


def seed_gen(p_1, p_2, p_3, t):
    preds = [seed_pred_i(p_1, t), seed_pred_i(p_2, t), seed_pred_i(p_3, t)]
    u_1 = (
        preds[0]
        - preds[2] * preds[0]
        - preds[0] * preds[1] / 2
        + preds[0] * preds[1] * preds[2] / 2
    )
    u_2 = (
        preds[1]
        - preds[2] * preds[1]
        - preds[0] * preds[1] / 2
        + preds[0] * preds[1] * preds[2] / 2
    )
    u_3 = preds[2]
    return u_1 * p_1["g"] + u_2 * p_2["g"] + u_3 * p_3["g"]  # fmt: skip


def paper(grokking: bool) -> list[Pattern]:
    return [
        Pattern(0.0 if grokking else 0.7, 0.15, 30, 1, name="heuristic"),
        Pattern(1.0, 0.15, 50, 0, name="memorising"),
        Pattern(1.0 if grokking else 0.2, 0.05, 200, 1, preferred=True, name="slow"),
    ]


def random_patterns(rng, n: int, n_preferred: int) -> list[Pattern]:
    pref = set(rng.choice(n, size=n_preferred, replace=False).tolist())
    return [
        Pattern(
            gamma=rng.uniform(0, 1),
            alpha=rng.uniform(0.01, 0.3),
            b=rng.uniform(0, 300),
            g=rng.uniform(0, 1),
            preferred=i in pref,
        )
        for i in range(n)
    ]


def as_seed_dict(p: Pattern) -> dict:
    return {"gamma": p.gamma, "alpha": p.alpha, "b": p.b, "g": p.g}


@pytest.mark.parametrize("grokking", [False, True])
def test_paper_settings_equal_seed_formulas(grokking):
    pats = paper(grokking)
    train, test = accuracies(pats, T)
    ref = [as_seed_dict(p) for p in pats]
    np.testing.assert_allclose(train, seed_acc(*ref, T), rtol=0, atol=1e-12)
    np.testing.assert_allclose(test, seed_gen(*ref, T), rtol=0, atol=1e-12)


def test_random_three_pattern_sets_equal_seed_formulas():
    # the seed's `gen` encodes "pattern 3 preferred, patterns 1 and 2 share"
    rng = np.random.default_rng(3)
    for _ in range(50):
        pats = random_patterns(rng, 3, 0)
        pats[2] = Pattern(pats[2].gamma, pats[2].alpha, pats[2].b, pats[2].g, preferred=True)
        ref = [as_seed_dict(p) for p in pats]
        train, test = accuracies(pats, T)
        np.testing.assert_allclose(train, seed_acc(*ref, T), rtol=0, atol=1e-12)
        np.testing.assert_allclose(test, seed_gen(*ref, T), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("n", "n_preferred"), [(1, 0), (1, 1), (2, 0), (2, 1), (2, 2), (4, 0), (4, 1), (6, 2), (6, 6)]
)
def test_dynamic_programme_equals_sum_over_firing_sets(n, n_preferred):
    rng = np.random.default_rng(10 * n + n_preferred)
    for _ in range(5):
        pats = random_patterns(rng, n, n_preferred)
        fast, slow = accuracies(pats, T), accuracies_by_subsets(pats, T)
        np.testing.assert_allclose(fast[0], slow[0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(fast[1], slow[1], rtol=0, atol=1e-12)


def test_sharing_rule_on_explicit_firing_sets():
    a = Pattern(1, 1, 0, 0.2)
    b = Pattern(1, 1, 0, 0.6)
    p1 = Pattern(1, 1, 0, 1.0, preferred=True)
    p2 = Pattern(1, 1, 0, 0.0, preferred=True)
    pats = [a, b, p1, p2]
    assert heldout_probability([False] * 4, pats) == 0.0
    assert heldout_probability([True, True, False, False], pats) == pytest.approx(0.4)  # shared
    assert heldout_probability([True, True, True, False], pats) == 1.0  # preferred wins
    assert heldout_probability([True, False, True, True], pats) == pytest.approx(0.5)  # 2 preferred


@pytest.mark.parametrize(
    ("n", "n_preferred", "seed"),
    [(2, 0, 0), (3, 0, 1), (5, 0, 2), (3, 1, 3), (4, 1, 4), (5, 2, 5)],
)
def test_closed_form_agrees_with_monte_carlo(n, n_preferred, seed):
    draws = 100_000
    rng = np.random.default_rng(seed)
    pats = random_patterns(rng, n, n_preferred)
    # time points where the patterns are mid-transition, so every event is genuinely random
    t = np.array(sorted(p.b for p in pats) + [0.0, 150.0, 299.0])
    train, test = accuracies(pats, t)
    mc_train, mc_test = simulate(pats, t, draws, rng)
    for exact, mc in ((train, mc_train), (test, mc_test)):
        se = np.sqrt(np.maximum(exact * (1 - exact), 1e-12) / draws)
        z = np.abs(mc - exact) / se
        assert z.max() < 4.5, (exact, mc, z)  # ≤ 18 points: 4.5 sd is far out for any of them
    assert np.max(np.abs(test - mc_test)) < 0.01


def test_limits():
    rng = np.random.default_rng(7)
    pats = random_patterns(rng, 4, 1)
    train, test = accuracies(pats, T)
    assert np.all(test <= train + 1e-12)  # a pattern must fire before it can generalise
    one = accuracies([pats[0]], T)
    np.testing.assert_allclose(one[0], pats[0].predictiveness(T))
    ones = [Pattern(p.gamma, p.alpha, p.b, 1.0, p.preferred) for p in pats]
    np.testing.assert_allclose(*accuracies(ones, T), atol=1e-12)  # g = 1 everywhere: test = train
    zeros = [Pattern(p.gamma, p.alpha, p.b, 0.0, p.preferred) for p in pats]
    assert np.all(accuracies(zeros, T)[1] == 0)
    assert np.all(np.isfinite(Pattern(1, 50, 0, 1).predictiveness([-1e6, 1e6])))


def test_paper_checked_values():
    out = paper_checks(paper(False), paper(True), 300)
    assert all(c["agrees"] for c in out["checks"].values()), out["checks"]
    g, d = out["grokking"], out["double_descent"]
    assert g["memorised_at"]["epoch"] == 81 and 80 < g["memorised_at"]["t"] < 81
    assert g["test_half_at"]["t"] == pytest.approx(200.0, abs=1e-6)  # p₃(200) = ½ exactly
    assert d["test"]["peak_epoch"] == 44 and d["test"]["peak"] == pytest.approx(0.534, abs=1e-3)
    assert d["test"]["dip_epoch"] == 98 and d["test"]["dip"] == pytest.approx(0.351, abs=1e-3)
    assert d["test"]["final"] > d["test"]["dip"] + 0.1
    assert d["regime"] == "double descent" and g["regime"] == "grokking"


def test_slider_corners():
    # lowering the heuristic and raising the slow pattern turns double descent into grokking
    base = paper(False)
    for h, s, regime in ((0.7, 0.2, "double descent"), (0.0, 1.0, "grokking")):
        pats = [Pattern(h, 0.15, 30, 1), base[1], Pattern(s, 0.05, 200, 1, preferred=True)]
        assert describe(pats, 300)["regime"] == regime
