"""Every figure kind of every experiment in params.yaml, drawn from real (short) trainings.

The end-to-end test draws the binary-operation figures of a tiny grid; only the quick preset
drew the rest, which is how a figure that broke on a new manifest key reached the GPU run
unnoticed. Here each experiment of the project's own params.yaml trains under the quick preset
with its budget cut to a few hundred steps (nothing groks: the figures must cope with that too),
then draws every figure it lists, with matplotlib's and seaborn's warnings as errors.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import yaml

from grokpipe.config.experiment import load_params
from grokpipe.config.validate import check_experiment, engine_config
from grokpipe.figures import FIGURES
from grokpipe.tasks import store
from grokpipe.train.members import assemble

ROOT = Path(__file__).resolve().parents[1]
PROJECT = yaml.safe_load((ROOT / "params.yaml").read_text())
STEPS = {"arithmetic": 60, "parity": 300}  # per task: a few evaluations, seconds in all


def short_params() -> dict:
    params = copy.deepcopy(PROJECT)
    params["preset"] = "quick"
    params["engine"].update(devices="cpu", compile=False, cuda_graph=False, progress=False)
    for task, block in params["defaults"].items():
        quick = block.setdefault("quick", {})
        quick.setdefault("train", {}).update(steps=STEPS[task], checkpoint_every=STEPS[task])
        quick.setdefault("eval", {}).update(every=STEPS[task] // 6, log_points=4)
    for exp in params["experiments"].values():
        # an experiment's own setting wins over the defaults' quick block, so the budget is
        # cut in each experiment's quick block too (parity_rate_limiting sets 100 000 steps)
        steps = STEPS[exp["task"]]
        exp.setdefault("quick", {}).setdefault("train", {}).update(
            steps=steps, checkpoint_every=steps
        )
    return params


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A project folder with every experiment generated, trained and evaluated."""
    from stages.evaluate import evaluate
    from stages.train import train_experiment

    work = tmp_path_factory.mktemp("figures")
    (work / "params.yaml").write_text(yaml.safe_dump(short_params(), sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        params = load_params()
        engine = engine_config(params)
        for name in params["experiments"]:
            exp = check_experiment(params, name)
            assert {r.config.train.steps for r in exp.runs} == {STEPS[exp.task]}, name
            store.write(f"data/datasets/{name}", exp)
            train_experiment(exp, assemble(exp, *store.read(f"data/datasets/{name}", exp)), engine)
            evaluate(exp, "quick")
    return work


def test_every_registered_kind_is_listed_by_an_experiment():
    listed = {kind for exp in PROJECT["experiments"].values() for kind in exp.get("figures", [])}
    listed |= set((PROJECT.get("transfer") or {}).get("figures", []))
    assert set(FIGURES) - listed == set(), "a figure kind no experiment draws goes untested"


@pytest.mark.parametrize("name", list(PROJECT["experiments"]))
def test_experiment_draws_every_figure_it_lists(trained, name, monkeypatch):
    from stages.figures import render

    monkeypatch.chdir(trained)
    exp = check_experiment(load_params(), name, models=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # an empty legend, an ignored palette
        written = [Path(p) for p in render(exp)]
    assert len(written) >= len(exp.figures)
    out = trained / "reports" / "figures" / name
    for path in written:
        drawn = out / path.name
        assert drawn.suffix == ".png" and drawn.stat().st_size > 5_000, drawn


def test_toy_model_stage_and_a_toy_fit_draw_their_figures(trained, monkeypatch):
    """The toy model's own stage and one experiment's toy-model fits: the other figure code."""
    import stages.toymodel
    from grokpipe.analysis.toyparams import fit_config
    from stages.toyfit import fit_toy_model

    monkeypatch.chdir(trained)
    params = load_params()
    fit = fit_config(params)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        stages.toymodel.main()
        fit_toy_model("parity_grokking", fit)
    for folder in ("toy_model", "toyfit_parity_grokking"):
        drawn = list((trained / "reports" / "figures" / folder).glob("*.png"))
        assert drawn and all(p.stat().st_size > 5_000 for p in drawn), folder


def test_spread_bands_stay_within_what_the_quantity_can_take():
    """An accuracy band inside [0, 1]; a loss band on a log axis positive everywhere (an
    arithmetic mean - sd below zero vanishes off a log axis)."""
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    from grokpipe.figures.style import mean_sd_line

    data = pd.DataFrame({"step": [1, 1, 2, 2], "acc": [0.2, 1.0, 0.9, 1.0]})
    data["loss"] = [1e-3, 1.0, 2e-3, 3.0]
    fig, (a, b) = plt.subplots(1, 2)
    mean_sd_line(a, data, "step", "acc", "k", clip=(0.0, 1.0))
    mean_sd_line(b, data, "step", "loss", "k", log=True)
    for ax, lo, hi in ((a, 0.0, 1.0), (b, 1e-12, np.inf)):
        band = ax.collections[0].get_paths()[0].vertices[:, 1]
        assert band.min() >= lo and band.max() <= hi
    geometric = b.lines[0].get_ydata()
    np.testing.assert_allclose(geometric, [np.sqrt(1e-3 * 1.0), np.sqrt(2e-3 * 3.0)])
    plt.close(fig)
