"""Part of stage `analyze@<experiment>`: fit the pattern toy model to every trained run's measured
train/validation accuracy and report the fitted patterns, the goodness of fit and a figure.

    python -m stages.toyfit <experiment> [params-file]   # reads toy_model.fit (defaults if absent)
"""

from __future__ import annotations

import sys
from pathlib import Path

from grokpipe import runstore
from grokpipe.analysis.toyfit import fit_experiment, summarise
from grokpipe.analysis.toyparams import FitConfig, fit_config
from grokpipe.config.experiment import load_params
from grokpipe.config.schema import to_dict
from grokpipe.figures.style import save, setup
from grokpipe.figures.toymodel import fit_figure
from grokpipe.io import atomic_dir, stage_main, write_json

MODEL = (
    "patterns are sigmoids in x = log10(step + 1): memorising (g=0) + generalising (g=1, "
    "preferred), plus a heuristic (g=1, not preferred) when it lowers BIC enough; b is log10 "
    "of the half-learned step, alpha the steepness per decade"
)


def fit_toy_model(name: str, cfg: FitConfig) -> dict:
    """Write reports/metrics/toyfit_<name>.json and reports/figures/toyfit_<name>/fits.png."""
    src = Path("data/runs") / name
    if not (src / "history.tsv").is_file():
        raise SystemExit(f"error: {src}/history.tsv not found (train experiment {name!r} first)")
    runs, history = runstore.read_runs(src), runstore.read_history(src)
    records = fit_experiment(runs, history, cfg)
    summary = summarise(records)

    setup()
    with atomic_dir(f"reports/figures/toyfit_{name}") as tmp:
        fig = fit_figure(records, history, name, cfg.max_runs_in_figure)
        save(fig, tmp / "fits.png")
    out = f"reports/metrics/toyfit_{name}.json"
    write_json(
        out,
        {
            "experiment": name,
            "model": MODEL,
            "config": to_dict(cfg),
            "summary": summary,
            "runs": {r["run_id"]: r for r in records},
        },
    )
    print(
        f"{name}: toy model fitted to {summary['fitted']}/{summary['runs']} runs "
        f"(heuristic kept in {summary['heuristic_chosen']}), median val RMSE "
        f"{summary['median_rmse_val']} -> {out}, reports/figures/toyfit_{name}/"
    )
    return summary


@stage_main
def main(name: str, params_path: str = "params.yaml") -> None:
    fit_toy_model(name, fit_config(load_params(params_path)))  # ConfigError before any write


if __name__ == "__main__":
    main(*sys.argv[1:3])
