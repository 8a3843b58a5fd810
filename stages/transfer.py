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
import yaml

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


def source_weights(src, run) -> dict:
    """Final weights of run `run` of the source experiment `src`."""
    path = Path("data/runs") / src.name
    if not (path / "weights").is_dir():
        raise ConfigError(
            f"{NAME}.train.init_from",
            f"{path} has no saved weights; set experiments.{src.name}.options.save_weights: true",
        )
    return runstore.load_weights(path, run.run_id)


def check_source_declared(experiment: str, pipeline: Path = Path("dvc.yaml")) -> None:
    """Refuse a source experiment whose runs this stage reads without depending on them: DVC
    re-runs a stage only when a declared dependency changes, so a fine-tuned run would keep
    the weights of a source that has since been retrained."""
    declared = yaml.safe_load(pipeline.read_text())["stages"][NAME].get("deps", [])
    if f"data/runs/{experiment}" not in declared:
        raise ConfigError(
            f"{NAME}.train.init_from",
            f"names experiment {experiment!r}, but the {NAME} stage in {pipeline} does not "
            f"depend on data/runs/{experiment}, so retraining it would not re-run {NAME}; "
            f"add data/runs/{experiment} to stages.{NAME}.deps",
        )


def source_experiment(params: dict, experiment: str):
    """The source experiment, checked once however many runs start from it: declared in
    dvc.yaml as this stage's dependency, and valid."""
    check_source_declared(experiment)
    return check_experiment(params, experiment, models=False)


def source_run(src, init_from: str, seed: int):
    """The run of source experiment `src` that `init_from` names with this seed."""
    experiment, _, condition = init_from.partition(":")
    for run in src.runs:
        if run.config.seed == seed and runstore.condition_label(run.labels, src.axes) == condition:
            return run
    known = ", ".join(sorted({runstore.condition_label(r.labels, src.axes) for r in src.runs}))
    raise ConfigError(
        f"{NAME}.train.init_from",
        f"no run of {experiment} with condition {condition!r} and seed {seed} "
        f"(conditions: {known})",
    )


def source_fact(src, run, member, source_table) -> dict:
    """What fine-tuned `member` starts from: its source run, whether and when that grokked,
    and its head start, the share of the member's validation rows that the source task's
    answers already get right. A source that never grokked is named on the console: the
    comparison is then not the one seed 002 makes."""
    row = source_table.loc[run.run_id]
    grokked = None if pd.isna(row["grokked_at"]) else int(row["grokked_at"])
    if grokked is None:
        print(
            f"{NAME}: warning: source {src.name}/{run.run_id} (seed {member.config.seed}) never "
            f"reached 99 % validation (final {row['final_val_acc']:.3f}): run {member.run_id} "
            "fine-tunes a model that did not grok"
        )
    return {
        "source": f"{src.name}/{run.run_id}",
        "source_grokked_at": grokked,
        "source_final_val_acc": float(row["final_val_acc"]),
        "head_start_val_acc": answer_agreement(
            member.config.data, member.data, member.val_idx, run.config.data.op
        ),
    }


def source_table(name: str):
    """The source experiment's per-run measurements (`grokking.per_run`), by run id."""
    path = Path("data/runs") / name
    runs, history = runstore.read_runs(path), runstore.read_history(path)
    return grokking.per_run(runs, history).set_index("run_id")


@stage_main
def main() -> None:
    use_project_compile_cache()  # before torch's compile machinery picks its default folder
    params = load_params()
    exp = check_experiment(params, NAME, section=NAME)
    fit_config(params)  # a bad toy_model.fit key fails here, not after the training
    engine = engine_config(params)
    members = build_members(exp)
    facts, sources, tables = {}, {}, {}
    for m in members:
        init_from = m.config.train.init_from
        if init_from == "scratch":
            continue
        name = init_from.partition(":")[0]
        if name not in sources:
            sources[name] = source_experiment(params, name)
            tables[name] = source_table(name)
        src = sources[name]
        run = source_run(src, init_from, m.config.seed)
        m.init_params = source_weights(src, run)
        facts[m.run_id] = source_fact(src, run, m, tables[name])
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
