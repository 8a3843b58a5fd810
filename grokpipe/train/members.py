"""Members for the engine straight from an experiment (datasets built in memory).

The pipeline's train stage reads datasets written by the generate stage instead; this path
serves the benchmark, tests and notebooks.
"""

from __future__ import annotations

from grokpipe.config.experiment import Experiment, load_experiment
from grokpipe.tasks.store import build_experiment_data
from grokpipe.train.ensemble import Member


def assemble(exp: Experiment, datasets: dict, splits: dict, manifest: list[dict]) -> list[Member]:
    """One Member per run, from datasets by key, splits by run id and the manifest rows
    (as `grokpipe.tasks.store` builds or reads them)."""
    return [
        Member(run.run_id, run.config, datasets[row["dataset"]], *splits[run.run_id])
        for run, row in zip(exp.runs, manifest, strict=True)
    ]


def build_members(exp: Experiment) -> list[Member]:
    return assemble(exp, *build_experiment_data(exp))


def members_from_block(block: dict, name: str = "experiment") -> list[Member]:
    """Members of a single experiment block given as a plain dict (no params file)."""
    return build_members(load_experiment({"experiments": {name: block}}, name))
