"""Saved compiled steps (`grokpipe.train.precompiled`): a later process loads the step an
earlier one compiled instead of tracing it, and computes what the eager step computes; a saved
step whose guards do not hold for an ensemble is never used.

Compiled with the "aot_eager" backend (AOTAutograd without kernel generation): the same
tracing, saving and loading as inductor on a GPU, in seconds on a CPU."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time

import numpy as np
import pytest
from fresh_process import train_in_new_process
from test_engine import block as engine_block

from grokpipe.train import precompiled
from grokpipe.train.ensemble import EngineOptions, EnsembleTrainer
from grokpipe.train.members import members_from_block

OPTS = EngineOptions(progress=False, compile=True, compile_backend="aot_eager")

pytestmark = pytest.mark.skipif(not precompiled.available(), reason="torch cannot save steps")


def block(grid, p=13, steps=30):
    """test_engine's tiny x+y block, shorter: each test here compiles."""
    return engine_block(grid, steps=steps, p=p)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A store holding the step and evaluation of a 3-run ensemble, compiled once."""
    root = tmp_path_factory.mktemp("inductor")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCHINDUCTOR_CACHE_DIR", str(root))
        precompiled.clear_memory()
        t, _ = run(members_from_block(block({"seed": [0, 1, 2]})))
        precompiled.clear_memory()
    assert t.timing.compiled_from == {"train_step": "traced", "eval_chunk": "traced"}
    return root


@pytest.fixture
def store(saved, tmp_path, monkeypatch):
    """A copy of the saved store, and no functions in memory: a later process's view."""
    shutil.copytree(saved, tmp_path, dirs_exist_ok=True)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    precompiled.clear_memory()
    yield tmp_path / "grokpipe_precompiled"
    precompiled.clear_memory()


def run(members, opts=OPTS):
    t = EnsembleTrainer(members, opts)
    assert t.run() == "done"
    return t, np.stack([r.metrics["train_loss"] for r in t.results()])


def test_a_new_process_loads_the_saved_step_and_matches_eager(store):
    assert len(list(store.rglob("*.bin"))) == 2

    # another process: other seeds, ensemble size, task size and step budget (the batch size
    # is the same: min(32, n_train / 2) is a constant of the graph, and of the key)
    later = block({"seed": [5, 6]}, p=17, steps=40)
    source, loss = train_in_new_process(later, compile=True, compile_backend="aot_eager")
    assert source == {"train_step": "disk", "eval_chunk": "disk"}
    _, eager = run(members_from_block(later), EngineOptions(progress=False))
    np.testing.assert_allclose(loss, eager, rtol=1e-5)


def test_a_step_whose_guards_fail_is_traced_again_and_saved_beside(store):
    """An ensemble of one run specialises its sizes of 1: the saved many-member step fails
    its guards for it, so it gets a step of its own, and both stay usable."""
    members = members_from_block(block({"seed": [0, 1, 2]}))
    alone, loss = run(members[1:2])
    assert alone.timing.compiled_from["train_step"] == "traced"
    _, eager = run(members[1:2], EngineOptions(progress=False))
    np.testing.assert_allclose(loss, eager, rtol=1e-5)
    precompiled.clear_memory()
    again, _ = run(members[:2])
    assert again.timing.compiled_from == {"train_step": "disk", "eval_chunk": "disk"}
    assert run(members[2:])[0].timing.compiled_from["train_step"] == "memory"


def test_an_unreadable_entry_is_reported_and_passed_over(store, caplog):
    for folder in store.iterdir():
        (folder / "0-torn.bin").write_bytes(b"not a compiled function")  # listed first
    members = members_from_block(block({"seed": [3, 4]}))
    with caplog.at_level(logging.WARNING, logger="grokpipe.train.precompiled"):
        t, loss = run(members)
    assert "is unusable" in caplog.text
    assert t.timing.compiled_from == {"train_step": "disk", "eval_chunk": "disk"}
    _, eager = run(members, EngineOptions(progress=False))
    np.testing.assert_allclose(loss, eager, rtol=1e-5)


def test_entries_are_keyed_by_what_the_guards_cannot_see():
    """Settings baked into the graph but guarded through closures or module identity (here
    the optimiser's betas, and the engine's source) change the entry key."""
    a = EnsembleTrainer(members_from_block(block({"seed": [0]})), OPTS)
    other = block({"seed": [0]})
    other["train"]["betas"] = [0.9, 0.99]
    b = EnsembleTrainer(members_from_block(other), OPTS)
    key = precompiled.entry_key
    assert key("train_step", a._compile_key(), "aot_eager", a.device) != key(
        "train_step", b._compile_key(), "aot_eager", b.device
    )
    assert key("train_step", a._compile_key(), "aot_eager", a.device) != key(
        "eval_chunk", a._compile_key(), "aot_eager", a.device
    )


def test_entries_unused_for_a_month_are_pruned_when_a_new_one_is_saved(store):
    kept = sorted(store.glob("*/*.bin"))
    stale = store / ("0" * 24)
    stale.mkdir()
    old = stale / "old.bin"
    old.write_bytes(b"an entry of an earlier code version")
    month_ago = time.time() - 31 * 86400
    os.utime(old, (month_ago, month_ago))
    for path in kept:  # saved by the fixture's process weeks ago, loaded just now: still used
        os.utime(path, (month_ago, month_ago))
    run(members_from_block(block({"seed": [0, 1]})))  # loads, which marks them as used
    run(members_from_block(block({"seed": [0]})))  # a one-run ensemble: traced and saved
    assert not old.exists()
    assert [p for p in kept if not p.exists()] == []


def test_a_saved_step_loads_and_first_runs_without_compile_workers(store, monkeypatch):
    """Loading a saved step and its first calls keep inductor's compile-worker pool off (the
    pool would start for nothing and hold up the process's exit); a trace keeps it."""
    import torch._inductor.config as inductor_config

    default = inductor_config.compile_threads
    seen = {}
    warm_up = EnsembleTrainer._warm_up_and_capture

    def recording(self, train_fn, eval_fn):
        seen[self.timing.compiled_from["train_step"]] = inductor_config.compile_threads
        return warm_up(self, train_fn, eval_fn)

    monkeypatch.setattr(EnsembleTrainer, "_warm_up_and_capture", recording)
    run(members_from_block(block({"seed": [3, 4]})))  # loads the saved step
    run(members_from_block(block({"seed": [3]})))  # one run: traces its own
    assert seen == {"disk": 1, "traced": default}
    assert inductor_config.compile_threads == default


def test_a_rebuild_down_to_one_run_counts_as_a_compile(store):
    """A smaller ensemble reuses the step in memory; one run specialises its sizes of 1 and
    traces its own, and a step of static sizes fits one ensemble only: compaction must not
    shrink into either (`runner.should_compact`)."""
    t, _ = run(members_from_block(block({"seed": [0, 1, 2]})))
    assert t.timing.compiled_from["train_step"] == "disk"
    assert not t.rebuild_compiles(2)
    assert t.rebuild_compiles(1)
    static = dataclasses.replace(OPTS, dynamic_sizes=False)
    s, _ = run(members_from_block(block({"seed": [0, 1, 2]})), static)
    assert s.rebuild_compiles(2)


def test_a_deterministic_step_is_saved_and_loaded_like_the_default(tmp_path, monkeypatch):
    """`engine.deterministic`'s gathers are a custom autograd function inside the traced step:
    it saves and loads across processes as the default step does, and trains as eager."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    options = {"compile": True, "compile_backend": "aot_eager", "deterministic": True}
    first = block({"seed": [0, 1, 2]})
    source, _ = train_in_new_process(first, **options)
    assert source == {"train_step": "traced", "eval_chunk": "traced"}
    later = block({"seed": [5, 6]}, p=17, steps=40)
    source, loss = train_in_new_process(later, **options)
    assert source == {"train_step": "disk", "eval_chunk": "disk"}
    _, eager = run(members_from_block(later), EngineOptions(progress=False, deterministic=True))
    np.testing.assert_allclose(loss, eager, rtol=1e-5)
