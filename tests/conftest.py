"""Shared test set-up.

- Make the repository root importable (for the `stages` package).
- Run torch on one intra-op thread: every tensor in these tests is tiny, and on a 2-core machine
  with anything else running, two OpenMP threads spin-wait on each other and make a 200-step
  CPU run about ten times slower (measured: ~1.3 s CPU on one thread, ~17 s on two).
- Give torch's compile caches, and the engine's saved compiled steps beside them, a fresh
  directory: a test then sees what a new machine sees, and leaves the user's cache alone.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

torch.set_num_threads(1)
os.environ["TORCHINDUCTOR_CACHE_DIR"] = _CACHE = tempfile.mkdtemp(prefix="grokpipe-tests-inductor-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
