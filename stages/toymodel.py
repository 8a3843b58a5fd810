"""Stage `toymodel`: the pattern toy model of seed 000 from the `toy_model` block of params.yaml.

Checks the paper's numbers (grokking: train passes 0.99 near t = 80, test reaches 0.5 near
t = 200; double descent: test peaks near 0.53 at t ≈ 44, dips to ≈ 0.35 near t = 98 and
recovers), describes every cell of the seed's slider grid, and draws both figures.

    python -m stages.toymodel [params-file]     # default params.yaml; another file for tests
"""

from __future__ import annotations

import sys
from dataclasses import replace

from grokpipe.analysis.toyparams import ToyModelParams, toy_model_params
from grokpipe.analysis.toyshape import describe, paper_checks
from grokpipe.config.experiment import load_params
from grokpipe.config.schema import to_dict
from grokpipe.figures.style import save, setup
from grokpipe.figures.toymodel import paper_figure, slider_grid
from grokpipe.io import atomic_dir, stage_main, write_json

FIGURES = "reports/figures/toy_model"
METRICS = "reports/metrics/toy_model.json"


def slider_cells(cfg: ToyModelParams) -> dict[tuple[float, float], dict]:
    """`describe` of the double-descent patterns with the heuristic's and the slow pattern's
    γ replaced by each (row, column) value of the grid."""
    base = cfg.double_descent
    h_i, s_i = base.index("heuristic"), base.index("slow")
    cells = {}
    for h in cfg.slider.heuristic_gamma:
        for s in cfg.slider.slow_gamma:
            patterns = list(base.patterns)
            patterns[h_i] = replace(patterns[h_i], gamma=h)
            patterns[s_i] = replace(patterns[s_i], gamma=s)
            cells[(h, s)] = describe(patterns, cfg.epochs)
    return cells


def _cell_metrics(d: dict) -> dict:
    """The few numbers per slider cell worth diffing across commits."""
    return {
        "regime": d["regime"],
        "memorised_at": d["memorised_at"]["t"],
        "test_half_at": d["test_half_at"]["t"],
        "test_peak": d["test"]["peak"],
        "test_dip": d["test"]["dip"],
        "final_test": d["test"]["final"],
    }


@stage_main
def main(params_path: str = "params.yaml") -> None:
    cfg = toy_model_params(load_params(params_path))  # ConfigError before anything is written
    dd, grok = cfg.double_descent.patterns, cfg.grokking.patterns
    described = paper_checks(dd, grok, cfg.epochs)
    cells = slider_cells(cfg)

    setup()
    base = cfg.double_descent
    with atomic_dir(FIGURES) as tmp:
        save(paper_figure(dd, grok, cfg.epochs, described), tmp / "paper_figure.png")
        regimes = {k: v["regime"] for k, v in cells.items()}
        fig = slider_grid(
            base.patterns,
            base.index("heuristic"),
            base.index("slow"),
            cfg.slider.heuristic_gamma,
            cfg.slider.slow_gamma,
            cfg.epochs,
            regimes,
        )
        save(fig, tmp / "slider_grid.png")

    checks = described.pop("checks")
    metrics = {
        "epochs": cfg.epochs,
        "all_checks_agree": all(c["agrees"] for c in checks.values()),
        "checks": checks,
        **described,
        "slider": {f"heuristic={h:g},slow={s:g}": _cell_metrics(d) for (h, s), d in cells.items()},
        "patterns": {"double_descent": to_dict(dd), "grokking": to_dict(grok)},
    }
    write_json(METRICS, metrics)
    agree = sum(c["agrees"] for c in checks.values())
    print(f"toy model: {agree}/{len(checks)} paper checks agree -> {METRICS}, {FIGURES}/")


if __name__ == "__main__":
    main(*sys.argv[1:2])
