"""Grokking measurements from training histories.

Memorised at  = first evaluated step with train accuracy ≥ 0.99;
grokked at    = first evaluated step with validation accuracy ≥ 0.99 (None if never);
delay         = grokked − memorised.
Final accuracy is read two ways: at the last evaluation (`final_*`), and as the median over the
last tenth of the steps trained (`end_*`). Validation accuracy often drops sharply for a few
evaluations after grokking and recovers, so one evaluation can land in a drop; the median
cannot. Those drops are counted too: `post_grok_drops` is how many times validation accuracy
fell below 0.9 after the run grokked, `post_grok_min_val_acc` the lowest it fell.
A condition is a grid point without its seed; its statistics are taken over seeds, counting
how many seeds grokked, so a condition that never grokks in the budget says so.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

THRESHOLD = 0.99
END_FRACTION = 0.1  # `end_*`: the last tenth of the steps trained
DROP_BELOW = 0.9  # a post-grokking drop: validation accuracy under this after grokking
RUN_FIELDS = (
    "memorized_at",
    "grokked_at",
    "delay",
    "final_train_acc",
    "final_val_acc",
    "end_train_acc",
    "end_val_acc",
    "post_grok_min_val_acc",
    "post_grok_drops",
    "final_train_loss",
    "final_val_loss",
    "last_step",
)


def first_step(steps: np.ndarray, values: np.ndarray, threshold: float = THRESHOLD):
    hit = np.flatnonzero(np.asarray(values) >= threshold)
    return int(steps[hit[0]]) if len(hit) else None


def post_grok_drops(steps: np.ndarray, val_acc: np.ndarray, grokked_at) -> tuple:
    """(lowest validation accuracy after grokking, number of separate falls below
    DROP_BELOW); (None, None) for a run that never grokked, or that was not evaluated after
    it grokked (a run stopped at 99 % validation): nothing was observed to count."""
    if grokked_at is None:
        return None, None
    after = val_acc[steps > grokked_at]
    if len(after) == 0:
        return None, None
    below = after < DROP_BELOW
    falls = int(below[0]) + int(np.count_nonzero(below[1:] & ~below[:-1]))
    return float(after.min()), falls


def run_summary(h: pd.DataFrame) -> dict:
    """Measurements of one run from its history rows (sorted by step)."""
    steps = h["step"].to_numpy()
    val = h["val_acc"].to_numpy()
    mem = first_step(steps, h["train_acc"].to_numpy())
    grok = first_step(steps, val)
    last = h.iloc[-1]
    end = h[steps >= steps[-1] * (1 - END_FRACTION)]
    low, drops = post_grok_drops(steps, val, grok)
    return {
        "memorized_at": mem,
        "grokked_at": grok,
        "delay": grok - mem if grok is not None and mem is not None else None,
        "final_train_acc": float(last["train_acc"]),
        "final_val_acc": float(last["val_acc"]),
        "end_train_acc": float(end["train_acc"].median()),
        "end_val_acc": float(end["val_acc"].median()),
        "post_grok_min_val_acc": low,
        "post_grok_drops": drops,
        "final_train_loss": float(last["train_loss"]),
        "final_val_loss": float(last["val_loss"]),
        "last_step": int(last["step"]),
    }


def per_run(runs: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """runs.tsv joined with each run's measurements."""
    rows = []
    for run_id, h in history.sort_values("step").groupby("run_id", sort=False):
        rows.append({"run_id": run_id, **run_summary(h)})
    return runs.merge(pd.DataFrame(rows), on="run_id", how="left")


def _stats(values: list) -> dict:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    arr = np.asarray(vals, dtype=float)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
        "min": float(arr.min()),
        "max": float(arr.max()),
        "n": len(arr),
    }


def condition_metrics(table: pd.DataFrame) -> dict[str, dict]:
    """Per condition: statistics over seeds of every run field, and seed counts."""
    out = {}
    for cond, g in table.groupby("condition", sort=False):
        entry = {
            "seeds": len(g),
            "grokked_seeds": int(g["grokked_at"].notna().sum()),
            "memorized_seeds": int(g["memorized_at"].notna().sum()),
        }
        entry["never_grokked"] = entry["grokked_seeds"] == 0
        for f in RUN_FIELDS:
            col = g[f].astype(object).where(g[f].notna(), None)
            entry[f] = _stats(list(col))
        out[cond] = entry
    return out


def experiment_metrics(
    name: str, title: str, preset: str, table: pd.DataFrame, timings: list[dict]
) -> dict:
    conditions = condition_metrics(table)
    grok = table["grokked_at"].dropna()
    return {
        "experiment": name,
        "title": title,
        "preset": preset,
        "summary": {
            "runs": len(table),
            "grokked_runs": int(table["grokked_at"].notna().sum()),
            "memorized_runs": int(table["memorized_at"].notna().sum()),
            "conditions": len(conditions),
            "conditions_grokked_all_seeds": sum(
                c["grokked_seeds"] == c["seeds"] for c in conditions.values()
            ),
            "median_grokked_at": float(grok.median()) if len(grok) else None,
        },
        "conditions": conditions,
        "timing": {
            "train_seconds": round(sum(t["train_s"] for t in timings), 2),
            "compile_seconds": round(sum(t["compile_s"] for t in timings), 2),
            "model_steps": int(sum(t["model_steps"] for t in timings)),
            "ensembles": int(sum(t["ensembles"] for t in timings)),
        },
    }


def held_after_stop(runs: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """history with each run that stopped early (`train.early_stop`) held at its last
    evaluation for the rest of its condition's evaluated steps, and a column `stopped` that
    marks the held rows.

    A stopped run's model is the one it stopped with, so its accuracy and loss at a later step
    are those of its last evaluation. Without the hold, a mean over seeds at a later step
    would average only the seeds still training, and each seed that grokked and stopped would
    pull the mean validation curve back down."""
    h = history.merge(runs[["run_id", "condition"]], on="run_id").sort_values(
        ["run_id", "step"], kind="stable", ignore_index=True
    )
    steps_of = {c: np.unique(part["step"].to_numpy()) for c, part in h.groupby("condition")}
    last = h.groupby("run_id", sort=False).tail(1)
    # each stopped run's last row, repeated at its condition's later steps
    rows, steps = [np.zeros(0, np.int64)], [np.zeros(0, h["step"].dtype)]
    for i, cond, stop in zip(last.index, last["condition"], last["step"]):
        later = steps_of[cond][steps_of[cond] > stop]
        rows.append(np.full(len(later), i))
        steps.append(later)
    tail = h.loc[np.concatenate(rows)].assign(step=np.concatenate(steps), stopped=True)
    out = pd.concat([h.assign(stopped=False), tail], ignore_index=True)
    return out.sort_values(["run_id", "step"], kind="stable").drop(columns="condition")


def curves(runs: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """Long table for `dvc plots`: step, condition, split, accuracy and loss (mean and
    standard deviation over seeds; runs that stopped early held at their last evaluation,
    `held_after_stop`), with the number of seeds and of seeds still training."""
    h = held_after_stop(runs, history).merge(runs[["run_id", "condition"]], on="run_id")
    h["training"] = ~h["stopped"]
    parts = []
    for split in ("train", "val"):
        g = h.groupby(["condition", "step"], sort=False)
        agg = g.agg(
            accuracy=(f"{split}_acc", "mean"),
            accuracy_sd=(f"{split}_acc", "std"),
            loss=(f"{split}_loss", "mean"),
            loss_sd=(f"{split}_loss", "std"),
            seeds=("run_id", "nunique"),
            training=("training", "sum"),
        ).reset_index()
        agg.insert(2, "split", split)
        parts.append(agg)
    out = pd.concat(parts, ignore_index=True)
    return out.sort_values(["condition", "split", "step"], kind="stable")[
        ["step", "condition", "split", "accuracy", "accuracy_sd", "loss", "loss_sd", "seeds"]
        + ["training"]
    ]
