"""Part of stage `analyze@<experiment>`: the experiment's seaborn figures from its result tables."""

from __future__ import annotations

import sys

from grokpipe.config.experiment import Experiment, load_params
from grokpipe.config.validate import check_experiment
from grokpipe.figures import figure
from grokpipe.figures.context import FigureContext
from grokpipe.figures.style import setup
from grokpipe.io import atomic_dir, stage_main


def render(exp: Experiment) -> list:
    """Every figure kind the experiment lists, into reports/figures/<name>/ (atomically)."""
    name = exp.name
    setup()
    written = []
    with atomic_dir(f"reports/figures/{name}") as tmp:
        ctx = FigureContext.load(
            exp, f"data/runs/{name}", f"reports/metrics/{name}.json", f"data/datasets/{name}", tmp
        )
        for kind in exp.figures:
            written += figure(kind)(ctx)
    print(f"{name}: {len(written)} figure(s) -> reports/figures/{name}/")
    return written


@stage_main
def main(name: str) -> None:
    render(check_experiment(load_params(), name))


if __name__ == "__main__":
    main(sys.argv[1])
