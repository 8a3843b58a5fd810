"""The `precompile` stage: one compile per distinct step, side by side in worker processes,
saved where the train stages then load it; markers that do not depend on the machine.

Compiled with the "aot_eager" backend (the same tracing and saving as inductor on a GPU, in
seconds on a CPU)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from grokpipe.config.experiment import load_experiment, load_params
from grokpipe.config.schema import ConfigError
from grokpipe.train import precompiled
from grokpipe.train.ensemble import EngineOptions, EnsembleTrainer
from stages import generate
from stages import precompile as stage

OPTS = EngineOptions(progress=False, compile=True, compile_backend="aot_eager")

pytestmark = pytest.mark.skipif(not precompiled.available(), reason="torch cannot save steps")


def experiment(op, steps, loss_on="answer", seeds=(0, 1, 2)):
    return {
        "task": "arithmetic",
        "data": {"op": op, "p": 11},
        "train": {"steps": steps, "loss_on": loss_on},
        "grid": {"seed": list(seeds)},
    }


PARAMS = {
    "preset": "full",
    "defaults": {
        "arithmetic": {
            "model": {
                "family": "transformer",
                "n_layers": 1,
                "d_model": 16,
                "n_heads": 2,
                "d_ff": 32,
            },
            "train": {"batch_size": 16, "precision": "fp32"},
            "eval": {"every": 5, "log_points": 0},
        }
    },
    "experiments": {
        # a and b differ only in what the graph does not hold (operation, step budget)
        "a": experiment("x+y", 20),
        "b": experiment("x-y", 30, seeds=(0, 1)),
        "c": experiment("x+y", 20, loss_on="sequence"),  # another graph
        "d": experiment("x+y", 20, seeds=(5,)),  # one run: sizes of 1 are specialised
    },
}


# a run of experiment a: Power et al.'s transformer under cross-entropy, which pads its tasks
CONFIG = load_experiment(PARAMS, "a").runs[0].config


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "compile_cache"))
    precompiled.clear_memory()
    generate.main()
    params = load_params()
    yield params, {n: stage.experiment_members(params, n) for n in params["experiments"]}
    precompiled.clear_memory()


def run_of(vocab):
    info = {"vocab_size": vocab, "n_classes": vocab}
    return SimpleNamespace(data=SimpleNamespace(info=info), config=CONFIG)


def test_keys_are_read_on_a_sample_covering_the_padded_vocabulary():
    a, b, c, d = (run_of(v) for v in (99, 99, 99, 99))
    assert stage.sample([a]) == [a]
    assert stage.sample([a, b]) == [a, b]
    assert stage.sample([a, b, c, d]) == [a, d]
    s5 = run_of(122)  # S5 in the middle of mod-97 runs: the sample must pad
    assert stage.sample([a, s5, c, d]) == [a, s5]


def test_each_distinct_step_compiled_once_then_loaded_by_the_train_stage(project, capsys):
    params, experiments = project
    todo = stage.steps_to_compile(experiments, OPTS, max_members=256, n_devices=1)
    # a's step serves b; c (sequence loss) and d (one run) need their own; each is compiled
    # on the whole of the largest ensemble that uses it (inductor tunes kernels to its sizes)
    assert [(name, len(ids)) for name, ids in todo] == [("a", 3), ("c", 3), ("d", 1)]
    assert todo[0][1] == ["r0000", "r0001", "r0002"]

    stage.compile_all(todo, params, OPTS)  # worker processes, side by side
    out = capsys.readouterr().out
    assert "3 step(s) on cpu, 6 functions" in out
    for name in ("a", "c", "d"):  # each function once, in a worker of its own
        for function in ("train_step", "eval_chunk"):
            assert out.count(f"  {name} {function} (") == 1, (name, function)
    assert out.count("(traced)") == 6
    assert stage.steps_to_compile(experiments, OPTS, 256, 1) == []

    # what a train stage (a new process, nothing in memory) then does: load, not trace
    precompiled.clear_memory()
    for name in ("a", "b"):
        t = EnsembleTrainer(experiments[name][1], OPTS)
        t.prepare()
        assert t.timing.compiled_from == {"train_step": "disk", "eval_chunk": "disk"}, name
        precompiled.clear_memory()


def test_each_function_of_a_step_is_a_task_of_its_own():
    todo = [("big", ["r0", "r1", "r2"]), ("small", ["r0"])]
    assert stage.compile_tasks(todo) == [
        ("big", ["r0", "r1", "r2"], "train_step"),
        ("big", ["r0", "r1", "r2"], "eval_chunk"),
        ("small", ["r0"], "train_step"),
        ("small", ["r0"], "eval_chunk"),
    ]


def test_the_costliest_steps_compile_first(project):
    """A larger model (more parameter tensors) before a larger ensemble of a smaller one: on
    the H100 host the transformers' steps took 3-6x as long to compile as the parity MLPs'.
    (`project` has made the folder; the params are then replaced.)"""
    big = yaml.safe_load(yaml.safe_dump(PARAMS))
    big["experiments"]["e"] = experiment("x-y", 20, seeds=(0, 1, 2, 3))
    big["experiments"]["c"]["model"] = {"n_layers": 2}  # a bigger graph, 3 runs
    Path("params.yaml").write_text(yaml.safe_dump(big))
    generate.main()
    params = load_params()
    experiments = {n: stage.experiment_members(params, n) for n in params["experiments"]}
    todo = stage.steps_to_compile(experiments, OPTS, max_members=256, n_devices=1)
    assert [(name, len(ids)) for name, ids in todo] == [("c", 3), ("e", 4), ("d", 1)]


@pytest.mark.parametrize(
    "cores, workers, threads",
    [(16, 8, 8), (2, 1, 2), (64, 8, 8), (64, 2, 32), (4, 2, 4), (1, 1, 1)],
)
def test_compile_threads_leave_no_core_idle_when_small_steps_finish(cores, workers, threads):
    assert stage.compile_threads(cores, workers) == threads


def test_compiling_workers_share_the_cores(project, monkeypatch, capsys):
    """Each worker's torch takes its share of the cores: with one OpenMP thread per core in
    each of eight workers, building the sweep's ensemble took 92 s instead of 7.5 s."""
    params, experiments = project
    monkeypatch.setattr(stage.os, "cpu_count", lambda: 8)
    todo = stage.steps_to_compile({"d": experiments["d"]}, OPTS, 256, 1)
    stage.compile_all(todo, params, OPTS)
    out = capsys.readouterr().out
    # up to 8 / 2 workers, but d's step has 2 functions: 2 workers, 8 / 2 threads each
    assert "2 functions, 2 at a time" in out
    assert out.count("on 4 thread(s)") == 2


def test_a_failing_compile_is_raised(project):
    params, _ = project
    with pytest.raises(ConfigError, match="no_such_experiment"):
        stage.compile_all([("no_such_experiment", ["r0000"])], params, OPTS)


def test_compile_one_needs_a_compiling_engine(project):
    _, experiments = project
    trainer = EnsembleTrainer(experiments["d"][1], replace(OPTS, compile=False))
    with pytest.raises(ValueError, match="engine.compile"):
        trainer.compile_one("train_step")


def test_markers_hold_nothing_of_the_machine(project, monkeypatch):
    params, experiments = project
    stage.write_markers(experiments)
    marker = json.loads((stage.OUT / "a.json").read_text())
    assert marker == {"experiment": "a", "runs": 3, "groups": 1}
    assert sorted(p.name for p in stage.OUT.iterdir()) == ["a.json", "b.json", "c.json", "d.json"]


def test_stage_saves_where_the_train_stages_look(project, monkeypatch):
    """Importing torch's compile machinery sets inductor's cache folder to /tmp unless it is
    set already: the stage must set the project's first (the H100 run saved elsewhere)."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    stage.main()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(Path("data/compile_cache").resolve())


def test_a_torch_without_bytecode_is_reported(monkeypatch, capsys):
    """Each stage would compile torch's source as it starts: the stage says how to avoid it."""
    import importlib.util

    monkeypatch.setattr(importlib.util, "cache_from_source", lambda path: path)  # it exists
    assert not stage.warn_if_torch_lacks_bytecode()
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(importlib.util, "cache_from_source", lambda path: path + ".missing")
    assert stage.warn_if_torch_lacks_bytecode()
    assert "python -m compileall" in capsys.readouterr().err


def test_the_largest_ensemble_of_a_shared_step_is_compiled_not_the_first(project):
    """b (2 runs) comes first, a (3 runs) shares its step: a's ensemble is the one compiled,
    so that the kernels are tuned to the larger sizes (the smaller one trains with them too)."""
    _, experiments = project
    reordered = {"b": experiments["b"], "a": experiments["a"]}
    todo = stage.steps_to_compile(reordered, OPTS, max_members=256, n_devices=1)
    assert todo == [("a", ["r0000", "r0001", "r0002"])]
    # with two devices a is dealt as two ensembles (2 + 1 runs) and b as two of one run each:
    # the two-run half is compiled, and the one-run ensembles' step of its own
    todo = stage.steps_to_compile(reordered, OPTS, max_members=256, n_devices=2)
    assert [(name, len(ids)) for name, ids in todo] == [("a", 2), ("b", 1)]


def test_each_ensemble_size_gets_the_forward_it_trains_with(project):
    """Shared prefixes only from `prefix_min_members` runs up (on a GPU, small ensembles take
    the plain forward): a's three runs compile a's forward and b's two runs their own, so that
    each train stage loads its step instead of tracing."""
    params, experiments = project
    opts = replace(OPTS, prefix_min_members=3)
    todo = stage.steps_to_compile(experiments, opts, max_members=256, n_devices=1)
    assert [(name, len(ids)) for name, ids in todo] == [("a", 3), ("c", 3), ("b", 2), ("d", 1)]
    stage.compile_all(todo, params, opts)
    for name in ("a", "b"):
        precompiled.clear_memory()
        t = EnsembleTrainer(experiments[name][1], opts)
        assert t.prefix_len == (2 if name == "a" else 0)
        t.prepare()
        assert t.timing.compiled_from == {"train_step": "disk", "eval_chunk": "disk"}, name
