"""Probe: how long a fresh process takes to get the engine's compiled step, and from where.

Each argument is one ensemble size, prepared in turn in this process (compiled or loaded,
then captured as CUDA graphs on a GPU); run it twice to see a later process load what the
first one saved (`grokpipe.train.precompiled`). Power et al.'s transformer, x/y mod 97, bf16.
Usage: python scripts/precompile_probe.py 3 64
"""

import sys
import time

T0 = time.perf_counter()
import torch  # noqa: E402

from grokpipe.bench import power_block  # noqa: E402
from grokpipe.train import precompiled  # noqa: E402
from grokpipe.train.ensemble import EngineOptions, EnsembleTrainer  # noqa: E402
from grokpipe.train.members import members_from_block  # noqa: E402

cuda = torch.cuda.is_available()
opts = EngineOptions(
    device="cuda" if cuda else "cpu",
    compile=True,
    cuda_graph=cuda,
    progress=False,
    compile_backend="inductor" if cuda else "aot_eager",
)
print(f"imports {time.perf_counter() - T0:.1f} s; store {precompiled.store_dir()}", flush=True)
for E in map(int, sys.argv[1:]):
    block = power_block("x/y", 97, 200, list(range(E)), precision="bf16" if cuda else "fp32")
    t = EnsembleTrainer(members_from_block(block), opts)
    t.prepare()
    print(
        f"RESULT E={E} compile+capture {t.timing.compile_s:.1f} s from {t.timing.compiled_from}"
        f" (process age {time.perf_counter() - T0:.1f} s)",
        flush=True,
    )
