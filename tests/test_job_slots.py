"""Jobs side by side on one device (`engine.jobs_per_device`): the same results as in turn, a
failure stops the job beside it, and settings that cannot run side by side are refused."""

from __future__ import annotations

import contextlib
import threading
import types
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_engine import block

from grokpipe.config.schema import ConfigError
from grokpipe.config.validate import engine_config
from grokpipe.train import runner
from grokpipe.train.ensemble import EngineOptions, EnsembleTrainer, JobAborted
from grokpipe.train.members import members_from_block
from grokpipe.train.runner import EngineConfig, train_members


def two_groups(steps=120):
    """Two widths: runs that cannot share an ensemble, so two jobs."""
    return members_from_block(block({"model.d_model": [32, 48], "seed": [0, 1]}, steps=steps))


def assert_trained_alike(tmp_path, in_turn: EngineConfig, side_by_side: EngineConfig):
    """The two groups trained under both settings: two jobs each, the same bits."""
    members = two_groups()
    a_runs, a_timings = train_members(members, in_turn, tmp_path / "in_turn", "t")
    b_runs, b_timings = train_members(members, side_by_side, tmp_path / "side_by_side", "t")
    assert len(a_timings) == len(b_timings) == 2
    for m in members:
        a, b = a_runs[m.run_id], b_runs[m.run_id]
        assert np.array_equal(a.steps, b.steps)
        for name in ("train_loss", "val_loss", "val_acc"):
            np.testing.assert_array_equal(a.metrics[name], b.metrics[name], err_msg=name)


def test_jobs_side_by_side_train_as_in_turn(tmp_path):
    one = EngineConfig(devices="cpu", cpu_workers=1, progress=False, jobs_per_device=1)
    two = EngineConfig(devices="cpu", cpu_workers=1, progress=False, jobs_per_device=2)
    assert two.slots("cpu") == 2
    assert_trained_alike(tmp_path, one, two)


def test_cpu_workers_train_ensembles_in_processes_as_in_turn(tmp_path):
    in_process = EngineConfig(devices="cpu", cpu_workers=1, progress=False)
    processes = EngineConfig(devices="cpu", cpu_workers=2, cpu_threads=1, progress=False)
    assert processes.cpu_processes(2) == (2, 1)
    assert_trained_alike(tmp_path, in_process, processes)


def test_cpu_worker_count_follows_cores_and_ensembles(monkeypatch):
    monkeypatch.setattr(runner.os, "sched_getaffinity", lambda _: set(range(8)), raising=False)
    auto = EngineConfig(devices="cpu")
    assert auto.cpu_processes(1) == (1, None)  # one ensemble: in-process, torch's threads
    assert auto.cpu_processes(2) == (2, 4)  # the cores shared out
    assert auto.cpu_processes(20) == (8, 1)
    assert EngineConfig(cpu_workers=3, cpu_threads=2).cpu_processes(5) == (3, 2)
    with pytest.raises(ConfigError, match="engine.cpu_workers"):
        engine_config({"engine": {"cpu_workers": 0}})


def test_a_failing_job_stops_the_one_beside_it(tmp_path, monkeypatch):
    members = two_groups(steps=20_000)
    real_run_job = runner._run_job
    training = threading.Event()
    ended: list[BaseException] = []

    def run_job(job, opts, checkpoint_dir, device_name="", abort=None):
        if job.members[0].config.model.d_model == 48:
            training.wait(timeout=60)  # fail while the other job trains
            raise RuntimeError("boom in the second job")
        training.set()
        try:
            return real_run_job(job, opts, checkpoint_dir, device_name, abort)
        except BaseException as e:
            ended.append(e)
            raise

    monkeypatch.setattr(runner, "_run_job", run_job)
    engine = EngineConfig(devices="cpu", cpu_workers=1, progress=False, jobs_per_device=2)
    with pytest.raises(RuntimeError, match="boom in the second job"):
        train_members(members, engine, tmp_path, "t")
    # the long job stopped at an evaluation instead of training its 20 000 steps
    assert len(ended) == 1 and isinstance(ended[0], JobAborted)
    assert not list(tmp_path.glob("*.result.pt"))


def test_side_by_side_needs_cuda_graphs_or_no_compile():
    assert EngineConfig(devices="cpu").slots("cpu") == 1  # auto: the CPU's cores are one job's
    with pytest.raises(ValueError, match="jobs_per_device"):
        EngineConfig(devices="cpu", cpu_workers=1, compile=True, jobs_per_device=2).slots("cpu")
    with pytest.raises(ConfigError, match="engine.jobs_per_device"):
        engine_config({"engine": {"jobs_per_device": 0}})


def test_combo_kernels_are_for_compiled_cuda_steps_of_two_runs_or_more():
    """`engine.combo_kernels: auto` asks for them on CUDA only; a trainer of one run compiles
    without them (the size at which a combined kernel once failed), and the choice is part of
    the saved step's key, so the two never share a step."""
    auto = EngineConfig()
    assert auto.options("cuda:0").combo_kernels and not auto.options("cpu").combo_kernels
    assert not EngineConfig(combo_kernels=False).options("cuda:0").combo_kernels
    with pytest.raises(ConfigError, match="engine.combo_kernels"):
        engine_config({"engine": {"combo_kernels": "sometimes"}})
    members = members_from_block(block({"seed": [0, 1]}, steps=10))
    opts = EngineOptions(progress=False, combo_kernels=True)
    two, one = EnsembleTrainer(members, opts), EnsembleTrainer(members[:1], opts)
    assert two.combo_kernels_on and not one.combo_kernels_on
    assert two.saved_step_keys() != one.saved_step_keys()


@contextlib.contextmanager
def compiler_settings_restored():
    """Every process-wide setting `_configure_compiler` writes, and inductor's deterministic
    mode, which the tests set, restored on exit (the config modules' own `patch`: pytest's
    monkeypatch deletes their options on undo)."""
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config
    import torch.fx.experimental._config as fx_config

    with contextlib.ExitStack() as restore:
        for module, names in (
            (inductor_config, ("deterministic", "combo_kernels", "combo_kernels_pointwise_only")),
            (dynamo_config, ("trace_autograd_ops", "force_parameter_static_shapes")),
            (fx_config, ("use_duck_shape",)),
        ):
            restore.enter_context(module.patch({n: getattr(module, n) for n in names}))
        yield


def test_deterministic_engine_keeps_reductions_out_of_combos_and_leaves_the_mode_alone():
    """With `engine.deterministic`, reductions stay out of combo kernels on a GPU (inductor
    tunes a combo kernel by timing its warps, which order a reduction inside it). Inductor's
    deterministic mode is not set process-wide: dynamo writes it back to off once it has
    traced a frame, so a saved step would compile without it anyway
    (`scripts/inductor_mode_probe.py`, docs/REPRODUCIBILITY.md); "strict" holds it as a
    compile option instead (the next test)."""
    import torch._inductor.config as inductor_config

    members = members_from_block(block({"seed": [0, 1]}, steps=10))
    with compiler_settings_restored():
        inductor_config.deterministic = False
        for flag in (True, False):
            trainer = EnsembleTrainer(members, EngineOptions(progress=False, deterministic=flag))
            trainer._configure_compiler()
            assert inductor_config.deterministic is False
            trainer.device = torch.device("cuda")
            trainer._configure_compiler()
            assert inductor_config.combo_kernels_pointwise_only is flag


def test_strict_determinism_holds_inductors_mode_for_every_compiled_graph(tmp_path, monkeypatch):
    """Dynamo writes inductor's deterministic mode back to off once it has traced a frame, so
    the saved steps, compiled after their trace, never had it (twenty-second session,
    docs/REPRODUCIBILITY.md). `engine.deterministic: strict` passes the mode to torch.compile,
    and every graph of the step and of the evaluation compiles under it on the saved-step path
    the pipeline takes. (With plain `true` they compile with the mode off, as
    `scripts/inductor_mode_probe.py` shows; not repeated here, at ~70 s of CI.) Real inductor
    on the CPU, a tiny parity MLP."""
    import torch._inductor.config as inductor_config
    import torch._inductor.graph as inductor_graph
    from test_parity import tiny_block

    from grokpipe.train import precompiled

    seen: list[bool] = []
    compile_to_module = inductor_graph.GraphLowering.compile_to_module

    def recording(self, *args, **kwargs):
        seen.append(inductor_config.deterministic)
        return compile_to_module(self, *args, **kwargs)

    monkeypatch.setattr(inductor_graph.GraphLowering, "compile_to_module", recording)
    members = members_from_block({**tiny_block(steps=20), "grid": {"seed": [0, 1]}})
    with compiler_settings_restored():
        # a fresh inductor cache: a cached graph would not compile, and show nothing
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
        precompiled.clear_memory()
        engine = EngineConfig(devices="cpu", cpu_workers=1, compile=True, deterministic="strict")
        opts = replace(engine.options("cpu"), progress=False)
        assert opts.deterministic and opts.inductor_deterministic
        trainer = EnsembleTrainer(members, opts)
        trainer.prepare()
        assert set(trainer.timing.compiled_from.values()) == {"traced"}
        assert trainer.run() == "done"
    precompiled.clear_memory()
    assert seen and all(seen), seen


def test_deterministic_engine_stops_older_inductors_rblock_scaling(monkeypatch):
    """Before torch 2.13, inductor's deterministic mode left "dynamic RBLOCK scaling" on: a
    reduction kernel timed itself against a copy with half its reduction block at first launch,
    in each process (the GPU image's torch 2.11, twentieth session). Where the setting exists,
    a deterministic step turns it off; elsewhere it is left alone. The config module is a
    stand-in with the older setting, so no process-wide setting changes."""
    import torch._inductor

    older = types.SimpleNamespace(
        deterministic=False,
        combo_kernels=False,
        combo_kernels_pointwise_only=False,
        dynamic_scale_rblock=True,
    )
    monkeypatch.setattr(torch._inductor, "config", older)
    members = members_from_block(block({"seed": [0, 1]}, steps=10))
    for flag in (True, False):
        opts = EngineOptions(progress=False, deterministic=flag, dynamic_sizes=False)
        EnsembleTrainer(members, opts)._configure_compiler()
        assert older.dynamic_scale_rblock is not flag
        assert older.deterministic is False  # the mode is left to "strict"


def test_deterministic_gathers_are_an_engine_setting_with_their_own_saved_step():
    """`engine.deterministic` reaches the model on every device, is checked as a boolean, and
    is part of the saved step's key (the two compile different graphs)."""
    assert EngineConfig(deterministic=True).options("cpu").deterministic
    assert not EngineConfig(deterministic=False).options("cuda:0").deterministic
    # by default on every device: the indexed gathers' backward adds in a varying order on
    # a GPU, and on a CPU in an ensemble of one run
    assert EngineConfig().options("cuda:0").deterministic
    assert EngineConfig().options("cpu").deterministic
    with pytest.raises(ConfigError, match="engine.deterministic"):
        engine_config({"engine": {"deterministic": "yes"}})
    members = members_from_block(block({"seed": [0, 1]}, steps=10))
    plain = EnsembleTrainer(members, EngineOptions(progress=False))
    fixed = EnsembleTrainer(members, EngineOptions(progress=False, deterministic=True))
    assert fixed.model.deterministic_gathers and not plain.model.deterministic_gathers
    assert fixed.saved_step_keys() != plain.saved_step_keys()
    # "strict" holds inductor's mode too, which compiles other kernels: a saved step of its own
    strict = EngineConfig(deterministic="strict").options("cuda:0")
    assert strict.deterministic and strict.inductor_deterministic
    assert not EngineConfig().options("cuda:0").inductor_deterministic
    held = EnsembleTrainer(members, replace(strict, device="cpu", progress=False))
    assert held.saved_step_keys() != fixed.saved_step_keys()
    assert held._compile_options() == {"deterministic": True}
    assert fixed._compile_options() == {}


def test_first_jobs_go_one_to_each_device_before_any_doubles_up(monkeypatch):
    """Two devices of two slots each and two jobs: each device trains one. Without `spread`
    the device whose worker starts first fills both its slots, and the other GPU idles (as on
    the fourteenth session's two H200s). Devices are simulated by `_serve_device` in threads,
    the second starting late, as a second worker process does; the first device's job starts
    training before the late device is up (its first slot waits for no other device)."""
    import queue as queue_module

    taken: dict[str, list[int]] = {"first": [], "late": []}
    first_started, late_started = threading.Event(), threading.Event()

    def run_job(job, opts, checkpoint_dir, device_name="", abort=None):
        """A job that trains until the other device has one too (jobs take minutes; the
        late worker takes seconds to start)."""
        taken[device_name].append(jobs.index(job))
        mine, other = (
            (first_started, late_started) if device_name == "first" else (late_started, None)
        )
        mine.set()
        if other is not None:
            other.wait(timeout=30)
        return {}

    monkeypatch.setattr(runner, "_run_job", run_job)
    jobs = runner.plan_jobs(two_groups(steps=10), 256, 1, "t", set())
    assert len(jobs) == 2
    engine = EngineConfig(devices="cpu", cpu_workers=1, progress=False, jobs_per_device=2)
    pending: queue_module.Queue = queue_module.Queue()
    for i in range(len(jobs)):
        pending.put(i)
    for _ in range(2 * engine.slots("cpu")):  # one stop per slot, as train_members puts them
        pending.put(None)
    barrier = threading.Barrier(2)
    started_before_late: list[bool] = []

    def device(name: str) -> None:
        if name == "late":
            started_before_late.append(first_started.wait(timeout=30))
            # a late worker's start-up: time for a second slot of the first device to take the
            # other job, were nothing holding it back
            threading.Event().wait(0.5)
        runner._serve_device(
            jobs,
            pending.get,
            lambda *_: None,
            engine,
            "cpu",
            None,
            device_name=name,
            spread=barrier.wait,
        )

    threads = [threading.Thread(target=device, args=(n,)) for n in ("first", "late")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert started_before_late == [True]
    assert sorted(taken["first"] + taken["late"]) == [0, 1]
    assert len(taken["first"]) == len(taken["late"]) == 1
