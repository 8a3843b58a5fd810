"""Part of stage `analyze@<experiment>`: grokking metrics (JSON, for `dvc metrics`) and learning
curves (TSV, for `dvc plots`) from the trained runs."""

from __future__ import annotations

import sys

from grokpipe import runstore
from grokpipe.analysis import ANALYSES, grokking
from grokpipe.config.experiment import Experiment, load_params
from grokpipe.config.validate import check_experiment
from grokpipe.io import atomic_file, stage_main, write_json


def evaluate(exp: Experiment, preset: str) -> dict:
    """Write reports/metrics/<name>.json and reports/curves/<name>.tsv from data/runs/<name>."""
    name = exp.name
    src = f"data/runs/{name}"
    runs, history = runstore.read_runs(src), runstore.read_history(src)
    table = grokking.per_run(runs, history)
    metrics = grokking.experiment_metrics(name, exp.title, preset, table, runstore.read_timing(src))
    metrics["analyses"] = {kind: ANALYSES[kind](exp, table, history) for kind in exp.analyses}
    curves = grokking.curves(runs, history)
    with atomic_file(f"reports/curves/{name}.tsv") as fh:
        curves.to_csv(fh, sep="\t", index=False, float_format="%.5g")
    write_json(f"reports/metrics/{name}.json", metrics)
    for kind, result in metrics["analyses"].items():
        print(f"{name}: {kind}: {result['verdict']}")
    s = metrics["summary"]
    print(
        f"{name}: {s['grokked_runs']}/{s['runs']} runs grokked; "
        f"-> reports/metrics/{name}.json, reports/curves/{name}.tsv"
    )
    return metrics


@stage_main
def main(name: str) -> None:
    params = load_params()
    evaluate(check_experiment(params, name, models=False), params.get("preset", "full"))


if __name__ == "__main__":
    main(sys.argv[1])
