"""Whole-params validation, run by every stage before it writes anything.

Beyond the per-block dataclass checks this catches what needs a model or a registry to judge:
layer-schedule names that the model lacks, unknown figure kinds, a bad `engine` block.
"""

from __future__ import annotations

import string

from grokpipe.config.experiment import Experiment, load_experiment
from grokpipe.config.schema import ConfigError, from_dict


def engine_config(params: dict):
    from grokpipe.train.runner import EngineConfig

    return from_dict(EngineConfig, params.get("engine"), "engine")


def check_experiment(
    params: dict, name: str, section: str = "experiments", models: bool = True
) -> Experiment:
    """Load and fully validate one experiment; raises ConfigError naming the bad key.

    Only a stage that declares the source experiment's runs as a dependency may start runs
    from their weights, so `train.init_from` must stay "scratch" under `experiments`.

    `models=False` leaves out what needs a built model (layer-schedule names): the stages
    that read finished runs, whose training stage checked it, then never import torch."""
    from grokpipe.analysis import ANALYSES
    from grokpipe.figures import FIGURES
    from grokpipe.tasks import TASKS

    exp = load_experiment(params, name, section)
    key = f"experiments.{name}" if section == "experiments" else section
    if section == "experiments":
        _check_name(name)
        for run in exp.runs:
            if run.config.train.init_from != "scratch":
                raise ConfigError(
                    f"{key}.train.init_from",
                    "only the transfer stage can start "
                    "runs from another experiment's weights; use 'scratch' here",
                )
    for i, kind in enumerate(exp.figures):
        if kind not in FIGURES:
            raise ConfigError(
                f"{key}.figures[{i}]", f"unknown figure kind {kind!r} (known: {', '.join(FIGURES)})"
            )
    for i, kind in enumerate(exp.analyses):
        if kind not in ANALYSES:
            raise ConfigError(
                f"{key}.analyses[{i}]", f"unknown analysis {kind!r} (known: {', '.join(ANALYSES)})"
            )
    if models:
        _check_models(exp, TASKS[exp.task], key)
    return exp


# outputs of stages of their own, which share folders with the experiments' outputs
# (data/runs/<name>, reports/metrics/<name>.json, reports/figures/<name>)
RESERVED_NAMES = {"transfer": "the transfer stage", "toy_model": "the toymodel stage"}
NAME_CHARACTERS = set(string.ascii_letters + string.digits + "_-")


def _check_name(name: str) -> None:
    """An experiment's name becomes folder and file names of its outputs, and DVC's stage
    names (`train@<name>`): one that another stage's outputs also use would have two stages
    write the same path, which DVC refuses only after the params are written."""
    key = f"experiments.{name}"
    if not name or not set(name) <= NAME_CHARACTERS:
        raise ConfigError(key, "a name may hold only letters, digits, '_' and '-'")
    if name in RESERVED_NAMES:
        raise ConfigError(key, f"the name is taken by {RESERVED_NAMES[name]}'s outputs")
    if name.startswith("toyfit_"):
        raise ConfigError(key, "names starting toyfit_ are taken by the toy-model fits' outputs")


def _check_models(exp: Experiment, task, key: str) -> None:
    """Build each distinct model once, to check the layer names its schedules use."""
    import torch

    from grokpipe.models import build_model
    from grokpipe.train.schedules import resolve_layer_periods

    checked = set()
    for run in exp.runs:
        cfg = run.config
        sig = (cfg.model_name, repr(cfg.model), repr(sorted(cfg.train.layers)))
        if sig in checked:
            continue
        checked.add(sig)
        info = task.build(cfg.data, cfg.seed).info
        # a one-member model on the CPU (a few MB at most): operators on the meta device
        # import torch's compiler stack, ~1.5 s that an analysis stage would pay for nothing
        with torch.device("cpu"):
            try:
                model = build_model(cfg.model_name, cfg.model, info, 1)
            except ConfigError as err:  # a setting that does not fit the task's sizes
                raise ConfigError(f"{key}.{err.key}", err.reason) from None
        resolve_layer_periods(model, cfg.train.layers, f"{key}.train.layers")
