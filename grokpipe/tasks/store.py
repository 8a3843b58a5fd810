"""The on-disk form of an experiment's datasets (`data/datasets/<experiment>/`).

`datasets.pt` holds each distinct dataset once (runs on the same table share it) and every
run's split; `manifest.json` lists, per run, its dataset, split sizes and config fingerprint,
so the training stage can refuse datasets generated from other params, and the experiment's
options. `experiment.json` holds the experiment's effective settings under the active preset.

The two JSON files also carry the params into DVC. `train@<experiment>` depends on
`manifest.json` and `datasets.pt`, `analyze@<experiment>` on the whole folder, instead of
listing `defaults.<task>` and `experiments.<name>` as params: the lock file then holds each
experiment's params once (under `generate`) rather than in four stages. DVC rewrites and
re-parses the whole lock file after every stage, and with four copies it was 134 kB: ~2 s of
YAML per stage on the 2-core CPU by the parse timings, ~1.3 s of which went with the three
extra copies (twenty-fifth session). A
change to what only the analysis reads (title, figures, analyses) now re-runs the analysis
and not the training, which the params listing could not tell apart.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from grokpipe.config.experiment import Experiment
from grokpipe.io import atomic_dir, write_json
from grokpipe.tasks import TASKS
from grokpipe.tasks.base import TaskData


def build_experiment_data(exp: Experiment):
    """(datasets by key, splits by run id, manifest rows) for every run of `exp`."""
    task = TASKS[exp.task]
    datasets: dict[str, TaskData] = {}
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    manifest = []
    for run in exp.runs:
        cfg = run.config
        key = task.dataset_key(cfg.data, cfg.seed)
        if key not in datasets:
            datasets[key] = task.build(cfg.data, cfg.seed)
        train_idx, val_idx = task.split(cfg.data, datasets[key], cfg.seed)
        splits[run.run_id] = (train_idx.astype(np.int64), val_idx.astype(np.int64))
        manifest.append(
            {
                "run_id": run.run_id,
                "dataset": key,
                "n_train": len(train_idx),
                "n_val": len(val_idx),
                "fingerprint": cfg.fingerprint(),
                "labels": run.labels,
            }
        )
    return datasets, splits, manifest


def write(path: str | Path, exp: Experiment) -> list[dict]:
    datasets, splits, manifest = build_experiment_data(exp)
    with atomic_dir(path) as tmp:
        torch.save(
            {"datasets": {k: asdict(v) for k, v in datasets.items()}, "splits": splits},
            tmp / "datasets.pt",
        )
        options = asdict(exp.options)
        write_json(
            tmp / "manifest.json", {"experiment": exp.name, "options": options, "runs": manifest}
        )
        write_json(tmp / "experiment.json", {"experiment": exp.name, "settings": exp.settings})
    return manifest


def read(path: str | Path, exp: Experiment):
    """(datasets by key, splits by run id, manifest) after checking they match `exp`."""
    path = Path(path)
    manifest = json.loads((path / "manifest.json").read_text())["runs"]
    want = {r.run_id: r.config.fingerprint() for r in exp.runs}
    have = {m["run_id"]: m["fingerprint"] for m in manifest}
    if want != have:
        raise RuntimeError(
            f"{path} was generated from other params; run `dvc repro` (or the generate stage) first"
        )
    blob = torch.load(path / "datasets.pt", weights_only=False)
    datasets = {k: TaskData(**v) for k, v in blob["datasets"].items()}
    return datasets, blob["splits"], manifest
