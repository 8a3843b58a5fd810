"""Members for the engine straight from an experiment (datasets built in memory).

The pipeline's train stage reads datasets written by the generate stage instead; this path
serves the benchmark, tests and notebooks.
"""

from __future__ import annotations

from grokpipe.config.experiment import Experiment, load_experiment
from grokpipe.tasks.store import build_experiment_data
from grokpipe.train.ensemble import Member


def build_members(exp: Experiment) -> list[Member]:
    datasets, splits, manifest = build_experiment_data(exp)
    return [
        Member(run.run_id, run.config, datasets[row["dataset"]], *splits[run.run_id])
        for run, row in zip(exp.runs, manifest, strict=True)
    ]


def members_from_block(block: dict, name: str = "experiment") -> list[Member]:
    """Members of a single experiment block given as a plain dict (no params file)."""
    return build_members(load_experiment({"experiments": {name: block}}, name))
