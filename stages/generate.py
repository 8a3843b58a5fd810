"""Stage `generate@<experiment>`: every dataset and split the experiment's runs need."""

from __future__ import annotations

import sys

from grokpipe.config.experiment import load_params
from grokpipe.config.validate import check_experiment
from grokpipe.io import stage_main
from grokpipe.tasks import store


@stage_main
def main(name: str) -> None:
    exp = check_experiment(load_params(), name)
    manifest = store.write(f"data/datasets/{name}", exp)
    n_sets = len({m["dataset"] for m in manifest})
    print(f"{name}: {n_sets} dataset(s), {len(manifest)} run split(s) -> data/datasets/{name}")


if __name__ == "__main__":
    main(sys.argv[1])
