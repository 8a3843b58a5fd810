"""Stage `generate`: every dataset and split of every experiment, data/datasets/<experiment>/.

One stage for all experiments: building them takes about a second each, far less than a
stage's start-up. Granularity is kept downstream: `train@<experiment>` depends on its own
folder only, and generation is deterministic, so an unchanged experiment's folder hashes the
same and its training is not re-run.

    python -m stages.generate [EXPERIMENT ...]   # default: every experiment in params.yaml
"""

from __future__ import annotations

import sys

from grokpipe.config.experiment import load_params
from grokpipe.config.validate import check_experiment
from grokpipe.io import stage_main
from grokpipe.tasks import store


@stage_main
def main(*names: str) -> None:
    params = load_params()
    # every experiment is checked before any is written: a bad key leaves nothing half-made
    exps = [check_experiment(params, n) for n in names or tuple(params.get("experiments") or {})]
    for exp in exps:
        name = exp.name
        manifest = store.write(f"data/datasets/{name}", exp)
        n_sets = len({m["dataset"] for m in manifest})
        print(f"{name}: {n_sets} dataset(s), {len(manifest)} run split(s) -> data/datasets/{name}")


if __name__ == "__main__":
    main(*sys.argv[1:])
