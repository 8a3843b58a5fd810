"""Grokking measurements from a history: milestones, end-of-training accuracy that one bad
evaluation cannot fake, and drops of validation accuracy after grokking."""

from __future__ import annotations

import numpy as np
import pandas as pd

from grokpipe.analysis.grokking import condition_metrics, curves, held_after_stop, run_summary


def history(val_acc, train_acc=None, every=100):
    n = len(val_acc)
    train = train_acc if train_acc is not None else [1.0] * n
    return pd.DataFrame(
        {
            "step": np.arange(1, n + 1) * every,
            "train_acc": train,
            "val_acc": val_acc,
            "train_loss": 0.0,
            "val_loss": 0.0,
        }
    )


def test_milestones_and_delay():
    train = [0.5, 0.995, 1.0, 1.0, 1.0, 1.0]
    s = run_summary(history([0.1, 0.2, 0.5, 0.991, 1.0, 1.0], train))
    assert (s["memorized_at"], s["grokked_at"], s["delay"]) == (200, 400, 200)
    assert s["post_grok_drops"] == 0 and s["post_grok_min_val_acc"] == 1.0


def test_end_accuracy_ignores_a_drop_at_the_last_evaluation():
    val = [0.1] * 10 + [1.0] * 89 + [0.4]  # grokked, then the last evaluation lands in a drop
    s = run_summary(history(val))
    assert s["final_val_acc"] == 0.4
    assert s["end_val_acc"] == 1.0  # median over the last tenth of the steps


def test_post_grok_drops_count_separate_falls():
    val = [0.2, 0.995, 0.5, 0.3, 1.0, 1.0, 0.8, 1.0, 0.95, 1.0]
    s = run_summary(history(val))
    assert s["grokked_at"] == 200
    assert s["post_grok_drops"] == 2  # 0.5, 0.3 is one fall; 0.8 the second; 0.95 is none
    assert s["post_grok_min_val_acc"] == 0.3


def test_a_run_that_never_grokked_has_no_drops():
    s = run_summary(history([0.1, 0.2, 0.3]))
    assert s["grokked_at"] is None and s["post_grok_drops"] is None
    table = pd.DataFrame([{"condition": "c", **s}, {"condition": "c", **s}])
    c = condition_metrics(table)["c"]
    assert c["never_grokked"] and c["post_grok_drops"]["n"] == 0


def test_a_run_stopped_at_grokking_has_no_observed_drops():
    """Stopped at its first evaluation ≥ 99 % (`train.early_stop`): nothing after grokking was
    evaluated, so there is no count of falls (not a count of zero)."""
    s = run_summary(history([0.1, 0.5, 0.995]))
    assert s["grokked_at"] == 300
    assert s["post_grok_drops"] is None and s["post_grok_min_val_acc"] is None


def test_curves_hold_runs_that_stopped_early_at_their_last_evaluation():
    """Seed 0 stops at step 200 (grokked), seed 1 trains on: the mean at steps 300-400 is
    over both seeds, seed 0 counted at its last evaluation, and `training` says how many
    were still training there."""
    runs = pd.DataFrame({"run_id": ["a", "b"], "condition": ["c", "c"], "seed": [0, 1]})
    a = history([0.5, 0.995]).assign(run_id="a")
    b = history([0.3, 0.4, 0.5, 0.6]).assign(run_id="b")
    held = held_after_stop(runs, pd.concat([a, b], ignore_index=True))
    rows_a = held[held["run_id"] == "a"]
    assert rows_a["step"].tolist() == [100, 200, 300, 400]
    assert rows_a["val_acc"].tolist() == [0.5, 0.995, 0.995, 0.995]
    assert rows_a["stopped"].tolist() == [False, False, True, True]
    assert held[held["run_id"] == "b"]["stopped"].sum() == 0
    assert held["step"].dtype == a["step"].dtype

    c = curves(runs, pd.concat([a, b], ignore_index=True))
    val = c[c["split"] == "val"].set_index("step")
    assert val["seeds"].tolist() == [2, 2, 2, 2]
    assert val["training"].tolist() == [2, 2, 1, 1]
    np.testing.assert_allclose(val["accuracy"], [0.4, 0.6975, 0.7475, 0.7975])
