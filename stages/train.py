"""Stage `train@<experiment>`: train every run of the experiment on every visible device.

Checkpoints go to data/checkpoints/<experiment>/ (kept across DVC re-runs), so a killed stage
resumes where it stopped; they are removed once the run outputs are written. Compiled kernels
are cached in data/compile_cache/ (both git-ignored and outside DVC's outputs).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from grokpipe import runstore
from grokpipe.config.experiment import Experiment, load_params
from grokpipe.config.validate import check_experiment, engine_config
from grokpipe.io import exclusive, stage_main
from grokpipe.tasks import store
from grokpipe.train.ensemble import Member
from grokpipe.train.members import assemble
from grokpipe.train.runner import EngineConfig, train_members


def use_project_compile_cache() -> None:
    """Compiled kernels and saved steps live in the project (git-ignored), so a later
    `dvc repro` - after a params change, or a reboot that empties /tmp - finds them."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path("data/compile_cache").resolve()))


def train_experiment(exp: Experiment, members: list[Member], engine: EngineConfig) -> None:
    """Train `members`, write data/runs/<name>/ and drop the checkpoints they no longer need.

    One process at a time per experiment (a second `python -m stages.train X` beside a running
    one fails at once): both would resume from, and write, the same checkpoints."""
    name = exp.name
    keep = {r.run_id for r in exp.runs} if exp.options.save_weights else set()
    checkpoints = Path("data/checkpoints") / name
    t0 = time.perf_counter()
    # beside the checkpoint folder, which is removed at the end while the lock is still held
    with exclusive(checkpoints.with_name(f"{name}.lock"), f"training of {name!r}"):
        results, timings = train_members(members, engine, checkpoints, name, keep)
        runstore.write(f"data/runs/{name}", exp, results, timings)
        shutil.rmtree(checkpoints, ignore_errors=True)
    print(
        f"{name}: trained {len(members)} run(s) in {len(timings)} ensemble(s), "
        f"{time.perf_counter() - t0:.1f} s -> data/runs/{name}"
    )


@stage_main
def main(name: str) -> None:
    use_project_compile_cache()  # before torch's compile machinery picks its default folder
    params = load_params()
    exp = check_experiment(params, name)
    engine = engine_config(params)
    members = assemble(exp, *store.read(f"data/datasets/{name}", exp))
    train_experiment(exp, members, engine)


if __name__ == "__main__":
    main(sys.argv[1])
