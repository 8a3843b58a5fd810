"""Toy-model fits to measured curves, the toy_model params schema, and the two stages."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from grokpipe.analysis.toyfit import Curves, fit_run, predict, robust_bic
from grokpipe.analysis.toyparams import FitConfig, fit_config, toy_model_params
from grokpipe.config.schema import ConfigError

FAST = FitConfig(restarts=2)
STEPS = np.unique(np.concatenate([np.round(np.logspace(0, 2, 12)), np.arange(0, 6001, 100)]))


def synthetic(theta, heuristic, noise=0.005, seed=0, steps=STEPS) -> Curves:
    """Curves drawn from the fitted model itself, plus a little noise and one loss spike."""
    rng = np.random.default_rng(seed)
    train, val = predict(np.array(theta, float), heuristic, steps)
    train = np.clip(train + rng.normal(0, noise, len(steps)), 0, 1)
    val = np.clip(val + rng.normal(0, noise, len(steps)), 0, 1)
    train[-10] = val[-10] = 0.4  # a loss spike the robust loss must shrug off
    return Curves(np.asarray(steps, float), train, val)


# memorising half-learned at 10^2.6 ≈ 400 steps, generalising at 10^3.4 ≈ 2500
GROKKING = [1.0, 8.0, 2.6, 1.0, 20.0, 3.4]


def test_fit_recovers_a_grokking_run():
    f = fit_run(synthetic(GROKKING, False), FAST, np.random.default_rng(0))
    assert f["status"] == "fitted" and f["model"] == "memorising+generalising"
    mem, gen = f["patterns"]["memorising"], f["patterns"]["generalising"]
    assert mem["b_log10_step"] == pytest.approx(2.6, abs=0.03)
    assert gen["b_log10_step"] == pytest.approx(3.4, abs=0.03)
    assert gen["gamma"] > 0.97 and mem["gamma"] > 0.97
    assert f["gap_decades"] == pytest.approx(0.8, abs=0.05)
    assert f["median_abs_val"] < 0.01  # the spike inflates RMSE, not the typical residual
    assert mem["learned_in_budget"] and gen["learned_in_budget"] and not f["notes"]


def test_heuristic_kept_only_when_it_earns_its_parameters():
    # a heuristic explaining 60 % of the data before memorisation: val rises early, dips, grokks
    with_h = [1.0, 8.0, 2.6, 1.0, 20.0, 3.4, 0.6, 10.0, 2.2]
    f = fit_run(synthetic(with_h, True, seed=1), FAST, np.random.default_rng(0))
    assert f["model"] == "heuristic+memorising+generalising", f["bic_gain_heuristic"]
    assert f["patterns"]["heuristic"]["gamma"] == pytest.approx(0.6, abs=0.05)
    assert f["heuristic_timing"] == "before memorising"
    plain = fit_run(synthetic(GROKKING, False, seed=2), FAST, np.random.default_rng(0))
    assert plain["bic_gain_heuristic"] < FAST.heuristic_min_bic_gain


def soft_l1_cost(r, f):
    """scipy's `least_squares` cost for loss="soft_l1", f_scale f."""
    return 0.5 * float(np.sum(f**2 * 2 * (np.sqrt(1 + (r / f) ** 2) - 1)))


def test_bic_is_taken_in_the_robust_loss_the_fit_minimised():
    rng = np.random.default_rng(0)
    small = rng.normal(0, 1e-3, 200)  # every residual far below f: the Gaussian BIC
    gaussian = 200 * math.log(float(np.sum(small**2)) / 200) + 6 * math.log(200)
    assert robust_bic(soft_l1_cost(small, 0.05), 200, 6) == pytest.approx(gaussian, abs=0.05)
    # one loss spike among 200 points of 0.01 noise: most of the RSS, a minority share of
    # the robust cost, so the rest of the curve still decides between the models
    noisy = rng.normal(0, 0.01, 200)
    noisy[7] = 0.6
    rss_share = noisy[7] ** 2 / float(np.sum(noisy**2))
    robust_share = soft_l1_cost(noisy[7:8], 0.05) / soft_l1_cost(noisy, 0.05)
    assert rss_share > 0.9 and robust_share < 0.75


def test_run_that_never_grokks_is_reported_not_crashed():
    rng = np.random.default_rng(4)
    train, _ = predict(np.array(GROKKING), False, STEPS)
    c = Curves(STEPS, train, np.clip(0.02 + rng.normal(0, 0.005, len(STEPS)), 0, 1))
    f = fit_run(c, FAST, rng)
    assert f["status"] == "fitted"
    assert not f["patterns"]["generalising"]["learned_in_budget"]
    assert any("generalising" in n for n in f["notes"])
    assert f["rmse_val"] < 0.05


def test_run_that_never_memorises_is_reported_not_crashed():
    rng = np.random.default_rng(5)
    flat = np.clip(0.02 + rng.normal(0, 0.005, len(STEPS)), 0, 1)
    f = fit_run(Curves(STEPS, flat, flat.copy()), FAST, rng)
    assert f["status"] == "fitted"
    assert not f["patterns"]["memorising"]["learned_in_budget"]
    assert not f["patterns"]["generalising"]["learned_in_budget"]
    assert f["rmse_train"] < 0.05


def test_too_few_points_and_nans():
    short = Curves(np.arange(5.0), np.zeros(5), np.zeros(5))
    assert fit_run(short, FAST, np.random.default_rng(0))["status"] == "skipped"
    c = synthetic(GROKKING, False)
    val = c.val.copy()
    val[::3] = np.nan  # a probe that was not evaluated every time
    f = fit_run(Curves(c.steps, c.train, val), FAST, np.random.default_rng(0))
    assert f["status"] == "fitted" and np.isfinite(f["rmse_val"])
    unmeasured = np.full_like(c.val, np.nan)  # without validation, M and G are the same
    f = fit_run(Curves(c.steps, c.train, unmeasured), FAST, np.random.default_rng(0))
    assert f["status"] == "skipped" and "val" in f["reason"]


PARAMS = {
    "toy_model": {
        "epochs": 300,
        "double_descent": {
            "patterns": [
                {"name": "heuristic", "gamma": 0.7, "alpha": 0.15, "b": 30, "g": 1},
                {"name": "memorising", "gamma": 1.0, "alpha": 0.15, "b": 50, "g": 0},
                {"name": "slow", "gamma": 0.2, "alpha": 0.05, "b": 200, "g": 1, "preferred": True},
            ]
        },
        "grokking": {
            "patterns": [
                {"name": "heuristic", "gamma": 0.0, "alpha": 0.15, "b": 30, "g": 1},
                {"name": "memorising", "gamma": 1.0, "alpha": 0.15, "b": 50, "g": 0},
                {"name": "slow", "gamma": 1.0, "alpha": 0.05, "b": 200, "g": 1, "preferred": True},
            ]
        },
        "slider": {"heuristic_gamma": [0.7, 0.0], "slow_gamma": [0.2, 1.0]},
        "fit": {"restarts": 1, "max_runs_in_figure": 2},
    }
}


def test_params_schema_names_the_bad_key():
    cfg = toy_model_params(PARAMS)
    assert cfg.grokking.patterns[2].preferred and cfg.epochs == 300
    assert fit_config({}) == FitConfig()  # the fit stage runs on defaults without the block
    bad = json.loads(json.dumps(PARAMS))
    bad["toy_model"]["grokking"]["patterns"][1]["gama"] = 1
    with pytest.raises(ConfigError, match=r"^toy_model\.grokking\.patterns\[1\]\.gama: unknown"):
        toy_model_params(bad)
    bad = json.loads(json.dumps(PARAMS))
    bad["toy_model"]["slider"]["slow_gamma"] = [1.5]
    with pytest.raises(ConfigError, match=r"^toy_model\.slider\.slow_gamma\[0\]:"):
        toy_model_params(bad)
    bad = json.loads(json.dumps(PARAMS))
    bad["toy_model"]["double_descent"]["patterns"][0]["name"] = "fast"
    with pytest.raises(ConfigError, match="needs a pattern named 'heuristic'"):
        toy_model_params(bad)


def _write_params(path, params):
    path.write_text(yaml.safe_dump(params))
    return str(path)


def test_toymodel_stage(tmp_path, monkeypatch):
    from stages import toymodel

    monkeypatch.chdir(tmp_path)
    toymodel.main(_write_params(tmp_path / "params.yaml", PARAMS))
    m = json.loads((tmp_path / "reports/metrics/toy_model.json").read_text())
    assert m["all_checks_agree"] and len(m["slider"]) == 4
    assert m["slider"]["heuristic=0,slow=1"]["regime"] == "grokking"
    figs = sorted(p.name for p in (tmp_path / "reports/figures/toy_model").iterdir())
    assert figs == ["paper_figure.png", "slider_grid.png"]


def test_stages_reject_a_bad_key_before_writing(tmp_path, monkeypatch, capsys):
    from stages import toyfit, toymodel

    monkeypatch.chdir(tmp_path)
    bad = json.loads(json.dumps(PARAMS))
    bad["toy_model"]["fit"]["restart"] = 3
    path = _write_params(tmp_path / "params.yaml", bad)
    for call in (lambda: toymodel.main(path), lambda: toyfit.main("ops", path)):
        with pytest.raises(SystemExit) as exc:
            call()
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "toy_model.fit.restart" in err
    assert not (tmp_path / "reports").exists()


def test_toyfit_stage(tmp_path, monkeypatch):
    from stages import toyfit

    runs_dir = tmp_path / "data/runs/tiny"
    runs_dir.mkdir(parents=True)
    frames = []
    for i, theta in enumerate([GROKKING, [1.0, 8.0, 2.6, 0.0, 1.0, 5.0]]):  # grokks / never
        c = synthetic(theta, False, seed=i)
        frames.append(pd.DataFrame({"run_id": f"r{i}", "step": c.steps.astype(int),
                                    "train_acc": c.train, "val_acc": c.val,
                                    "train_loss": 1.0, "val_loss": 1.0}))  # fmt: skip
    pd.concat(frames).to_csv(runs_dir / "history.tsv", sep="\t", index=False)
    pd.DataFrame({"run_id": ["r0", "r1"], "condition": ["op=a", "op=b"], "op": ["a", "b"],
                  "seed": [0, 0]}).to_csv(runs_dir / "runs.tsv", sep="\t", index=False)  # fmt: skip
    monkeypatch.chdir(tmp_path)
    toyfit.main("tiny", _write_params(tmp_path / "params.yaml", PARAMS))
    m = json.loads((tmp_path / "reports/metrics/toyfit_tiny.json").read_text())
    assert m["summary"]["fitted"] == 2 and m["summary"]["generalising_learned"] == 1
    assert m["runs"]["r1"]["fit"]["notes"]
    assert (tmp_path / "reports/figures/toyfit_tiny/fits.png").is_file()
