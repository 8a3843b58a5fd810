"""Part of stage `analyze@<experiment>`: the experiment's seaborn figures from its result tables."""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

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
    with atomic_dir(f"reports/figures/{name}") as tmp:
        ctx = FigureContext.load(
            exp, f"data/runs/{name}", f"reports/metrics/{name}.json", f"data/datasets/{name}", tmp
        )
        written = draw(exp.figures, ctx)
    print(f"{name}: {len(written)} figure(s) -> reports/figures/{name}/")
    return written


# The context of the figures being drawn, for forked workers to inherit rather than unpickle
_DRAWING: tuple[list, FigureContext] | None = None


def _draw_one(i: int) -> list:
    functions, ctx = _DRAWING
    return functions[i](ctx)


def draw(kinds: list[str], ctx: FigureContext) -> list:
    """Draw each figure kind, side by side in forked processes when there are several cores.

    Each kind is independent and bound by matplotlib's layout on one core (~1 s a figure; an
    experiment has 2-7), while the GPU waits for the next training stage."""
    global _DRAWING
    functions = [figure(kind) for kind in kinds]  # imported once, before the fork
    workers = min(len(kinds), os.cpu_count() or 1)
    if workers <= 1:
        return [path for fn in functions for path in fn(ctx)]
    _DRAWING = (functions, ctx)
    try:
        fork = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=fork) as pool:
            return [path for paths in pool.map(_draw_one, range(len(kinds))) for path in paths]
    finally:
        _DRAWING = None


@stage_main
def main(name: str) -> None:
    render(check_experiment(load_params(), name, models=False))


if __name__ == "__main__":
    main(sys.argv[1])
