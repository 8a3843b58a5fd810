"""Stage `analyze@<experiment>`: everything computed from an experiment's trained runs, in one
stage: grokking metrics and learning curves (`stages.evaluate`), the experiment's figures
(`stages.figures`) and the toy-model fits (`stages.toyfit`).

One stage rather than three because each stage starts Python afresh and updates the DVC lock:
on the GPU machine that overhead was 5-10 s per stage, a fifth of the analysis time. The three
parts stay separate modules, and each can still be run alone (`python -m stages.figures X`).
"""

from __future__ import annotations

import multiprocessing
import sys

from grokpipe.analysis.toyparams import fit_config
from grokpipe.config.experiment import Experiment, load_params
from grokpipe.config.validate import check_experiment
from grokpipe.io import stage_main
from stages.evaluate import evaluate
from stages.figures import render
from stages.toyfit import fit_toy_model


def analyze(exp: Experiment, params: dict) -> None:
    """Metrics, then the figures that read them beside the toy-model fits.

    The fits read only the runs, so they run in a forked process while the figures are drawn:
    both are CPU-bound for seconds per experiment (~200 fits for the fraction sweep) and each
    uses a pool of processes, which on the GPU machine's 16 cores overlap rather than queue."""
    fit = fit_config(params)  # a bad toy_model.fit key fails before anything is written
    evaluate(exp, params.get("preset", "full"))
    fitting = multiprocessing.get_context("fork").Process(
        target=fit_toy_model, args=(exp.name, fit), name=f"toyfit {exp.name}"
    )
    fitting.start()
    try:
        render(exp)
    finally:
        fitting.join()
    if fitting.exitcode != 0:
        raise SystemExit(f"error: the toy-model fits of {exp.name!r} failed (see above)")


@stage_main
def main(name: str) -> None:
    params = load_params()
    analyze(check_experiment(params, name, models=False), params)


if __name__ == "__main__":
    main(sys.argv[1])
