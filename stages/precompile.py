"""Stage `precompile`: compile every distinct training step the train stages will need, all
at once, before the first of them runs.

Each train stage is a process of its own, which loads its compiled step from disk when an
earlier process saved one (`grokpipe.train.precompiled`) and otherwise traces it, on one CPU
core. Traced stage after stage, the main job's seven distinct steps (Power et al.'s transformer
with the loss on the answer, with the loss on every token, and five parity MLPs) took 291 s on
the H100 host in the ninth session (111 s for the first alone), while the host's other 15
cores sat idle. Here each distinct step is traced on the largest ensemble that will use it,
each of its two functions (the optimiser step and the evaluation chunk) in a process of its
own, all side by side: ensemble and task sizes are compiled as dynamic sizes, so the saved
step fits every ensemble of its train stages. The train stages then load it
(tenth session: this stage took 108 s, and every train stage loaded its step in 7-9 s).

Why the largest ensemble, not a small sample of it: inductor takes the sizes a step is traced
at as hints for its kernels (block sizes, split reductions), and picks among candidate
configurations by timing the first run. Until the fifteenth session this stage compiled on a
sample of two runs, and the large ensembles then trained with kernels chosen for two: at 51
members 6 % (padded, as ops) to 32 % (unpadded) below the same step compiled at 51
(BENCHMARKS.md).

Nothing here changes what is trained. A saved step whose guards do not hold for a train
stage's ensemble is never called: that stage traces its own, as it would have without this
stage. Where nothing is compiled (a CPU), the stage only writes its markers.

Output: `data/precompiled/<experiment>.json`, one marker per experiment, which its train stage
depends on, because DVC orders stages by their dependencies only. A marker holds nothing that
depends on the machine, so moving to another machine re-runs no train stage.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from grokpipe.config.experiment import load_params
from grokpipe.config.validate import check_experiment, engine_config
from grokpipe.io import atomic_dir, stage_main
from grokpipe.tasks import store
from grokpipe.train import precompiled
from grokpipe.train.ensemble import (
    COMPILED_FUNCTIONS,
    EngineOptions,
    group_key,
    options_for_ensemble,
    padded_sizes,
)
from grokpipe.train.members import assemble
from stages.train import use_project_compile_cache

OUT = Path("data/precompiled")


def experiment_members(params: dict, name: str):
    exp = check_experiment(params, name)
    return exp, assemble(exp, *store.read(f"data/datasets/{name}", exp))


def sample(members: list) -> list:
    """A few runs whose trainer holds the same saved-step keys as the whole ensemble's (its
    only run: an ensemble of one has sizes of 1 specialised; in an ensemble padded to its
    largest vocabulary, a run of the smallest and one of the largest, since the padded step
    differs; else the first and last): enough to read the keys, cheap to build."""
    if len(members) <= 2:
        return members
    smallest = min(members, key=_task_sizes)
    largest = max(members, key=_task_sizes)
    if _task_sizes(smallest) != _task_sizes(largest):
        return [m for m in members if m is smallest or m is largest]
    return [members[0], members[-1]]


def _task_sizes(member) -> tuple[int, ...]:
    """The sizes the engine pads (`ensemble.padded_sizes`), as this run's task has them."""
    return tuple(member.data.info.get(k, 0) for k in sorted(padded_sizes(member.config)))


def steps_to_compile(
    experiments: dict, opts: EngineOptions, max_members: int, n_devices: int, pad: bool = True
) -> list[tuple[str, list[str]]]:
    """(experiment, run ids of the ensemble to compile it on) for each distinct compiled step
    not yet saved: the largest ensemble of every train stage that uses the step; the steps
    likely to take longest to compile first.

    Ensembles are planned as the train stages will plan them, and each one's saved-step keys
    are read from a sample of its runs built on the device with the options of the whole
    ensemble (`options_for_ensemble`: on a GPU a sample of two runs would otherwise take the
    plain forward where the ensemble shares prefixes, and its step would serve no train
    stage, as in the thirteenth session's first try). Experiments that differ only in what the
    graph does not hold (step budget, data sizes, vocabulary) share one step."""
    import torch

    from grokpipe.train.ensemble import EnsembleTrainer
    from grokpipe.train.runner import plan_jobs

    # step -> (its model's parameter tensors, experiment, runs of its largest ensemble)
    largest: dict[tuple, tuple[int, str, list]] = {}
    for name, (_, members) in experiments.items():
        for job in plan_jobs(members, max_members, n_devices, name, set(), pad):
            job_opts = options_for_ensemble(opts, len(job.members))
            trainer = EnsembleTrainer(sample(job.members), job_opts, label=name)
            keys = tuple(trainer.saved_step_keys().values())
            if all(precompiled.saved_on_disk(k) for k in keys):
                continue
            # A one-run ensemble has its sizes of 1 specialised: a step of its own under the
            # same key. (Once a key has any saved step, a later one-run ensemble is not
            # compiled here: its train stage traces it, as it would without this stage.)
            step = (keys, len(job.members) == 1)
            if step not in largest or len(job.members) > len(largest[step][2]):
                largest[step] = (len(list(trainer.model.parameters())), name, job.members)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    # costliest first: compile time grows with the graph, which grows with the model's
    # parameter tensors (each has its forward, backward and optimiser ops), and then with the
    # ensemble (kernel tuning). H100, sixteenth session: the transformers' steps took 78-89 s
    # to compile, the parity MLPs' 14-25 s; queued behind the MLPs, the signed step ended last
    costliest = sorted(largest.values(), key=lambda step: (-step[0], -len(step[2])))
    return [(name, [m.run_id for m in runs]) for _, name, runs in costliest]


@dataclass(frozen=True)
class CompiledFunction:
    """What a worker reports of one compiled function of a step: where its time went, and
    where the function came from ("traced", or "disk" when an earlier process had saved it)."""

    runs: int
    start_s: float  # from submission to the worker starting on it (process start, imports)
    setup_s: float  # reading the runs and building the ensemble
    compile_s: float  # tracing, compiling, saving and the first run (kernel autotuning)
    source: str
    torch_threads: int  # the worker's share of the cores (`_share_cores`)


def compile_function(
    params: dict,
    name: str,
    run_ids: list[str],
    function: str,
    opts: EngineOptions,
    submitted: float,
) -> CompiledFunction:
    """In a worker process: trace, compile, save and first run (which tunes its kernels) one
    of the step's functions (`COMPILED_FUNCTIONS`) for the ensemble of `run_ids` of `name`."""
    start = time.time()
    import torch

    from grokpipe.train.ensemble import EnsembleTrainer

    _, members = experiment_members(params, name)
    wanted = set(run_ids)
    picked = [m for m in members if m.run_id in wanted]
    job_opts = options_for_ensemble(opts, len(picked))
    trainer = EnsembleTrainer(picked, job_opts, label=f"precompile {name}")
    setup_s = time.time() - start
    trainer.compile_one(function)
    timing = trainer.timing
    return CompiledFunction(
        len(picked),
        start - submitted,
        setup_s,
        timing.compile_s,
        timing.compiled_from[function],
        torch.get_num_threads(),
    )


def compile_tasks(todo: list[tuple[str, list[str]]]) -> list[tuple[str, list[str], str]]:
    """Each step's functions as tasks of their own, in the steps' order (`steps_to_compile`
    puts the costliest first): the step of the fraction sweep's 189 runs is the stage's
    critical path, and its two functions (85 s and 25 s on the H100 host) then compile side by
    side rather than in turn."""
    return [(name, ids, function) for name, ids in todo for function in COMPILED_FUNCTIONS]


# kernel-compile processes each compiling worker may start, even where that oversubscribes
OVERSUBSCRIBED_COMPILE_THREADS = 8


def compile_threads(cores: int, workers: int) -> int:
    """Inductor's kernel-compile processes for each of `workers` compiling side by side.

    An even share (cores / workers) leaves cores idle once the small steps are done: in the
    fifteenth session's main job (8 workers on 16 cores) the five parity steps compiled in
    24-32 s and the signed and seq2seq steps in ~80 s, while the step of ops and the sweep
    (~300 kernels) took 150 s on its 2 kernel-compile processes (120 s with 16 in a probe).
    With up to `OVERSUBSCRIBED_COMPILE_THREADS` each, the steps still compiling take up the
    cores the others left."""
    return max(1, cores // workers, min(cores, OVERSUBSCRIBED_COMPILE_THREADS))


def _share_cores(threads: int) -> None:
    """In each compiling worker: torch's CPU ops take the worker's share of the cores.

    Each process otherwise starts one OpenMP thread per core, and eight workers on 16 cores
    ran 128 of them while the kernel compiles ran too: building the fraction sweep's 189 runs
    (7.5 s in its train stage) took 92 s in its precompile workers, and a parity MLP ensemble
    (0.1 s) 12-16 s (H100 host, sixteenth session), on the stage's critical path."""
    import torch

    torch.set_num_threads(threads)


def compile_all(todo: list[tuple[str, list[str]]], params: dict, opts: EngineOptions) -> None:
    """Compile each function of each step in its own process, side by side, reporting each
    as it finishes (the last one is the stage's critical path); every failure is reported,
    and the first raised."""
    tasks = compile_tasks(todo)
    cores = os.cpu_count() or 2
    workers = max(1, min(len(tasks), cores // 2))
    os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = str(compile_threads(cores, workers))
    t0 = time.perf_counter()
    print(
        f"precompile: {len(todo)} step(s) on {opts.device}, {len(tasks)} functions, "
        f"{workers} at a time",
        flush=True,
    )
    errors = []
    spawn = get_context("spawn")
    threads = max(1, cores // workers)
    with ProcessPoolExecutor(workers, spawn, _share_cores, (threads,)) as pool:
        futures = {
            pool.submit(compile_function, params, name, ids, fn, opts, time.time()): (name, ids, fn)
            for name, ids, fn in tasks
        }
        for future in as_completed(futures):
            name, ids, fn = futures[future]
            try:
                done = future.result()
            except Exception as exc:
                errors.append(exc)
                print(f"  {name} {fn} ({len(ids)} run(s)): failed: {exc!r}", file=sys.stderr)
                continue
            print(
                f"  {name} {fn} ({done.runs} run(s)), done at {time.perf_counter() - t0:.0f} s: "
                f"{done.compile_s:.1f} s ({done.source}); worker start {done.start_s:.1f} s, "
                f"set-up {done.setup_s:.1f} s on {done.torch_threads} thread(s)",
                flush=True,
            )
    if errors:
        raise errors[0]
    print(f"precompile: done in {time.perf_counter() - t0:.1f} s", flush=True)


def warn_if_torch_lacks_bytecode() -> bool:
    """Say so when torch's modules have no cached bytecode: every stage then compiles torch's
    Python source as it starts. The GPU image of the eleventh session shipped that way (with
    PYTHONDONTWRITEBYTECODE=1): a train stage that loads its step took 20 s there, 9.5 s once
    site-packages was byte-compiled (BENCHMARKS.md)."""
    import importlib.util

    import torch

    if os.path.exists(importlib.util.cache_from_source(torch.__file__)):
        return False
    print(
        "precompile: warning: torch has no cached bytecode on this machine (a read-only or "
        "bytecode-free install, or PYTHONDONTWRITEBYTECODE set), so every stage compiles "
        "torch's Python source as it starts, seconds each; byte-compile it once as pip would "
        "have: python -m compileall -q -j 0 " + os.path.dirname(os.path.dirname(torch.__file__)),
        file=sys.stderr,
    )
    return True


def write_markers(experiments: dict, pad: bool = True) -> None:
    with atomic_dir(OUT) as tmp:
        for name, (_, members) in experiments.items():
            marker = {
                "experiment": name,
                "runs": len(members),
                # groups of runs that can share an ensemble: the same on every machine
                "groups": len({group_key(m.config, m.data, pad) for m in members}),
            }
            (tmp / f"{name}.json").write_text(json.dumps(marker, indent=1) + "\n")


@stage_main
def main() -> None:
    # first: importing torch's compile machinery sets inductor's default cache folder (/tmp),
    # and the steps must be saved where the train stages look
    use_project_compile_cache()
    warn_if_torch_lacks_bytecode()
    params = load_params()
    engine = engine_config(params)
    engine.validate("engine")
    experiments = {name: experiment_members(params, name) for name in params["experiments"]}
    devices = engine.device_names()
    opts = engine.options(devices[0])
    if not opts.compile:
        print(f"precompile: nothing to compile on {opts.device} (engine.compile is off there)")
    elif not precompiled.available():
        print("precompile: this torch cannot save compiled steps; each train stage traces its own")
    else:
        todo = steps_to_compile(
            experiments, opts, engine.max_members, len(devices), engine.pad_task_sizes
        )
        if todo:
            compile_all(todo, params, opts)
        else:
            print("precompile: every step is saved already")
    write_markers(experiments, engine.pad_task_sizes)


if __name__ == "__main__":
    main()
