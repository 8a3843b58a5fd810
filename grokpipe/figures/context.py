"""What a figure function gets: the experiment and its result tables, nothing to train."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

from grokpipe import runstore
from grokpipe.analysis import grokking
from grokpipe.config.experiment import Experiment


@dataclass
class FigureContext:
    exp: Experiment
    runs: pd.DataFrame  # runs.tsv
    history: pd.DataFrame  # history.tsv
    table: pd.DataFrame  # runs joined with per-run measurements
    metrics: dict  # reports/metrics/<experiment>.json
    datasets_dir: Path
    out_dir: Path

    @classmethod
    def load(cls, exp: Experiment, runs_dir, metrics_path, datasets_dir, out_dir):
        runs, history = runstore.read_runs(runs_dir), runstore.read_history(runs_dir)
        return cls(
            exp,
            runs,
            history,
            grokking.per_run(runs, history),
            json.loads(Path(metrics_path).read_text()),
            Path(datasets_dir),
            Path(out_dir),
        )

    @property
    def budget(self) -> int:
        return max(r.config.train.steps for r in self.exp.runs)

    @cached_property
    def _labelled_history(self) -> pd.DataFrame:
        return grokking.held_after_stop(self.runs, self.history).merge(self.runs, on="run_id")

    def history_with_labels(self) -> pd.DataFrame:
        """history joined with runs.tsv, for curves averaged over seeds: runs that stopped
        early are held at their last evaluation (`stopped` rows, `grokking.held_after_stop`),
        so that every mean is over every seed of its condition."""
        return self._labelled_history.copy()
