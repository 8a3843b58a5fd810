"""Stage `transfer`: seed 002's transfer run. Fine-tune grokked models of one experiment on
another task and compare with training that task from scratch.

The `transfer:` block of params.yaml is one experiment whose grid varies `train.init_from`
between "scratch" and "<experiment>:<condition>"; a run starting from weights takes them from
the source experiment's run with the same seed (the source must set options.save_weights).
This stage depends on the source's runs in dvc.yaml, so retraining the source re-runs it. It
trains and analyses (`stages.analyze`) in one go because its runs exist only here.
"""

from __future__ import annotations

from pathlib import Path

from grokpipe import runstore
from grokpipe.config.experiment import load_params
from grokpipe.config.schema import ConfigError
from grokpipe.config.validate import check_experiment, engine_config
from grokpipe.io import stage_main
from grokpipe.train.members import build_members
from stages.analyze import analyze
from stages.train import train_experiment, use_project_compile_cache

NAME = "transfer"


def source_weights(init_from: str, seed: int) -> dict:
    """Final weights of the source run named by `init_from` with this `seed`."""
    experiment, _, condition = init_from.partition(":")
    src = Path("data/runs") / experiment
    if not (src / "weights").is_dir():
        raise ConfigError(
            f"{NAME}.train.init_from",
            f"{src} has no saved weights; set experiments.{experiment}.options.save_weights: true",
        )
    runs = runstore.read_runs(src)
    match = runs[(runs["condition"] == condition) & (runs["seed"] == seed)]
    if len(match) != 1:
        known = ", ".join(sorted(set(runs["condition"])))
        raise ConfigError(
            f"{NAME}.train.init_from",
            f"no run of {experiment} with condition "
            f"{condition!r} and seed {seed} (conditions: {known})",
        )
    return runstore.load_weights(src, match["run_id"].iloc[0])


@stage_main
def main() -> None:
    use_project_compile_cache()  # before torch's compile machinery picks its default folder
    params = load_params()
    exp = check_experiment(params, NAME, section=NAME)
    engine = engine_config(params)
    members = build_members(exp)
    for m in members:
        if m.config.train.init_from != "scratch":
            m.init_params = source_weights(m.config.train.init_from, m.config.seed)
    train_experiment(exp, members, engine)
    analyze(exp, params)


if __name__ == "__main__":
    main()
