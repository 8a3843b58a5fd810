"""The on-disk form of an experiment's trained runs (`data/runs/<experiment>/`).

runs.tsv     one row per run: run_id, condition, one column per grid axis, seed
history.tsv  long format: run_id, step, train_loss, train_acc, val_loss, val_acc,
             weight_norm, med (NaN where a probe does not apply)
timing.json  per ensemble job: members, device, setup/compile/train seconds, steps
weights/     <run_id>.pt final weights, when the experiment sets options.save_weights

Everything downstream (metrics, figures, toy-model fits, the report) reads these tables.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from grokpipe.config.experiment import Experiment
from grokpipe.io import atomic_dir


def condition_label(labels: dict, axes: list[str]) -> str:
    """`op=x+y,train_fraction=0.3`: the run's grid point without its seed ('all' if none).
    An axis that a union grid's other blocks vary but this run's block does not (the random
    split's k beside the strips') is left out rather than shown as `k=None`."""
    parts = [f"{a}={labels[a]}" for a in axes if a != "seed" and labels.get(a) is not None]
    return ",".join(parts) if parts else "all"


def runs_table(exp: Experiment) -> pd.DataFrame:
    rows = []
    for run in exp.runs:
        row = {"run_id": run.run_id, "condition": condition_label(run.labels, exp.axes)}
        row.update({a: run.labels[a] for a in exp.condition_axes})
        row["seed"] = run.config.seed
        rows.append(row)
    return pd.DataFrame(rows)


def write(path: str | Path, exp: Experiment, results: dict, timings: list[dict]) -> None:
    frames = []
    for run in exp.runs:
        r = results[run.run_id]
        df = pd.DataFrame({"run_id": run.run_id, "step": r.steps, **r.metrics})
        frames.append(df)
    history = pd.concat(frames, ignore_index=True)
    with atomic_dir(path) as tmp:
        runs_table(exp).to_csv(tmp / "runs.tsv", sep="\t", index=False)
        history.to_csv(tmp / "history.tsv", sep="\t", index=False, float_format="%.6g")
        (tmp / "timing.json").write_text(json.dumps(timings, indent=1))
        if exp.options.save_weights:
            import torch  # here only: the analysis stages read runs without torch

            (tmp / "weights").mkdir()
            for run in exp.runs:
                params = results[run.run_id].final_params
                if not params:  # a result trained without keeping them: never an empty file
                    raise RuntimeError(f"{run.run_id}: its result holds no final weights")
                torch.save(params, tmp / "weights" / f"{run.run_id}.pt")


def read_runs(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(
        Path(path) / "runs.tsv",
        sep="\t",
        keep_default_na=False,
        dtype={"condition": str, "run_id": str},
    )


def read_history(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(Path(path) / "history.tsv", sep="\t")


def read_timing(path: str | Path) -> list[dict]:
    return json.loads((Path(path) / "timing.json").read_text())


def load_weights(path: str | Path, run_id: str) -> dict:
    """A run's final weights, {parameter name: tensor}."""
    import torch

    return torch.load(Path(path) / "weights" / f"{run_id}.pt", weights_only=True)
