"""Stage `transfer`: seed 002's transfer run. Fine-tune grokked models of one experiment on
another task and compare with training that task from scratch.

The `transfer:` block of params.yaml is one experiment whose grid varies `train.init_from`
between "scratch" and "<experiment>:<condition>"; a run starting from weights takes them from
the source experiment's run with the same seed (the source must set options.save_weights).
This stage depends on the source's runs in dvc.yaml, so retraining the source re-runs it. It
trains and analyses (`stages.analyze`) in one go because its runs exist only here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from grokpipe import runstore
from grokpipe.analysis import grokking
from grokpipe.analysis.toyparams import fit_config
from grokpipe.analysis.transfer import transfer_verdict
from grokpipe.config.experiment import load_params
from grokpipe.config.schema import ConfigError
from grokpipe.config.validate import check_experiment, engine_config
from grokpipe.io import stage_main, write_json
from grokpipe.tasks.arithmetic_task import answer_agreement
from grokpipe.train.members import build_members
from stages.analyze import analyze
from stages.train import train_experiment, use_project_compile_cache

NAME = "transfer"


def source_weights(params: dict, init_from: str, seed: int) -> dict:
    """Final weights of the source run named by `init_from` with this `seed`."""
    src, run = source_run(params, init_from, seed)
    path = Path("data/runs") / src.name
    if not (path / "weights").is_dir():
        raise ConfigError(
            f"{NAME}.train.init_from",
            f"{path} has no saved weights; set experiments.{src.name}.options.save_weights: true",
        )
    return runstore.load_weights(path, run.run_id)


def source_run(params: dict, init_from: str, seed: int):
    """(source experiment, its run that `init_from` names with this seed)."""
    experiment, _, condition = init_from.partition(":")
    src = check_experiment(params, experiment, models=False)
    for run in src.runs:
        if run.config.seed == seed and runstore.condition_label(run.labels, src.axes) == condition:
            return src, run
    known = ", ".join(sorted({runstore.condition_label(r.labels, src.axes) for r in src.runs}))
    raise ConfigError(
        f"{NAME}.train.init_from",
        f"no run of {experiment} with condition {condition!r} and seed {seed} "
        f"(conditions: {known})",
    )


def source_facts(params: dict, members) -> dict:
    """Per fine-tuned run: the source run, whether and when it grokked, and its head start:
    the share of this run's validation rows that the source task's answers already get
    right. A source that never grokked is named on the console: the comparison is then not
    the one seed 002 makes."""
    facts, histories = {}, {}
    for m in members:
        if m.config.train.init_from == "scratch":
            continue
        src, run = source_run(params, m.config.train.init_from, m.config.seed)
        if src.name not in histories:
            path = Path("data/runs") / src.name
            histories[src.name] = grokking.per_run(
                runstore.read_runs(path), runstore.read_history(path)
            ).set_index("run_id")
        row = histories[src.name].loc[run.run_id]
        grokked = None if pd.isna(row["grokked_at"]) else int(row["grokked_at"])
        facts[m.run_id] = {
            "source": f"{src.name}/{run.run_id}",
            "source_grokked_at": grokked,
            "source_final_val_acc": float(row["final_val_acc"]),
            "head_start_val_acc": answer_agreement(
                m.config.data, m.data, m.val_idx, run.config.data.op
            ),
        }
        if grokked is None:
            print(
                f"{NAME}: warning: source {src.name}/{run.run_id} (seed {m.config.seed}) never "
                f"reached 99 % validation (final {row['final_val_acc']:.3f}): run {m.run_id} "
                "fine-tunes a model that did not grok"
            )
    return facts


@stage_main
def main() -> None:
    use_project_compile_cache()  # before torch's compile machinery picks its default folder
    params = load_params()
    exp = check_experiment(params, NAME, section=NAME)
    fit_config(params)  # a bad toy_model.fit key fails here, not after the training
    engine = engine_config(params)
    members = build_members(exp)
    for m in members:
        if m.config.train.init_from != "scratch":
            m.init_params = source_weights(params, m.config.train.init_from, m.config.seed)
    facts = source_facts(params, members)
    train_experiment(exp, members, engine)
    analyze(exp, params)
    # the head start and the sources beside the grokking metrics, in the file analyze wrote
    out = Path(f"reports/metrics/{NAME}.json")
    metrics = json.loads(out.read_text())
    verdict = transfer_verdict(facts, metrics)
    metrics.setdefault("analyses", {})["transfer"] = {"verdict": verdict, "runs": facts}
    write_json(out, metrics)
    print(f"{NAME}: {verdict}")


if __name__ == "__main__":
    main()
