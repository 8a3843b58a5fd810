"""Train an experiment block in a new Python process, as a later DVC train stage would: the
tests of saved compiled steps need a process that has traced nothing itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

_CODE = """
import json, sys
from grokpipe.train.ensemble import EngineOptions, EnsembleTrainer
from grokpipe.train.members import members_from_block
block, options = json.loads(sys.argv[1]), json.loads(sys.argv[2])
t = EnsembleTrainer(members_from_block(block), EngineOptions(progress=False, **options))
t.run()
loss = [r.metrics["train_loss"].tolist() for r in t.results()]
print(json.dumps({"from": t.timing.compiled_from, "loss": loss}))
"""


def train_in_new_process(block: dict, **options) -> tuple[dict, np.ndarray]:
    """(where each compiled function came from, train losses [members, evaluations])."""
    out = subprocess.run(
        [sys.executable, "-c", _CODE, json.dumps(block), json.dumps(options)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return got["from"], np.array(got["loss"])
