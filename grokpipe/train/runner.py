"""Deal an experiment's runs into ensembles and train them on every visible device.

Runs that can share kernels are grouped (see `ensemble.group_key`), large groups are cut to at
most `max_members`, and groups are split further while there are more devices than jobs. Jobs
go to one worker process per GPU through a queue (the largest first), so a device that finishes
early takes the next job. On a machine without GPUs one in-process worker trains on the CPU, or,
when an experiment has several ensembles, one worker process per core (`cpu_workers`).

On a GPU, a worker trains up to `jobs_per_device` jobs at once, each in its own thread and CUDA
stream: groups that cannot share an ensemble (S5 beside the mod-97 operations with
`pad_task_sizes` off, say) fill the gaps between each other's kernels instead of waiting their
turn. They are set up (compiled, captured) one at a time and then replay their CUDA graphs side
by side; a job's numbers do not depend on what trains beside it.

Each job checkpoints to `<checkpoint_dir>/<job>.pt` and leaves `<job>.result.pt` when done; a
re-run after a crash skips finished jobs and resumes the others from their checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import queue as queue_module
import threading
import traceback
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from grokpipe.config.schema import check
from grokpipe.train import checkpoint as ckpt
from grokpipe.train.ensemble import (
    EngineOptions,
    EnsembleTrainer,
    JobAborted,
    Member,
    MemberResult,
    group_key,
    options_for_ensemble,
    setup_lock,
)


@dataclass(frozen=True)
class EngineConfig:
    """`engine:` block of params.yaml: where and how to run, never what to compute."""

    devices: str | list[int] = "auto"  # auto: every visible GPU, else the CPU; "cpu"; [0, 1]
    compile: bool | str = "auto"  # auto: on for CUDA
    cuda_graph: bool | str = "auto"
    max_members: int = 256
    eval_chunk_rows: int = 1024  # dataset rows per evaluation forward (memory only)
    progress: bool = True
    # CPU threads for training: "auto" keeps torch's default (every core). On a machine
    # shared with other busy processes, 1 avoids oversubscription (measured 50x faster there).
    cpu_threads: int | str = "auto"
    # Jobs (ensembles) training at once on one device. "auto": 2 on a GPU with CUDA graphs (an
    # experiment's second group trains in the gaps of the first), 1 on the CPU, whose cores
    # one job already keeps busy.
    jobs_per_device: int | str = "auto"
    # Worker processes on a machine without GPUs, each training its own ensembles on its
    # share of the cores. "auto": one per core, at most one per ensemble, so an experiment
    # of one ensemble trains in-process as before. The quick preset's parity_frozen_deep (two
    # depths, two ensembles) trained in 40 s instead of 52 s on 2 cores (26th session); as
    # two threads of one process it gained nothing, each step being bound by the interpreter.
    cpu_workers: int | str = "auto"
    # Runs whose tasks differ only in vocabulary and classes (S5 beside the mod-97 operations)
    # train as one ensemble padded to the largest, each member's extra classes masked out of
    # its logits (exact under cross-entropy; see `ensemble.padded_sizes`). Off: one job each.
    pad_task_sizes: bool = True
    # inductor's combo kernels (horizontal fusion) in compiled CUDA steps of ensembles of two
    # runs or more: "auto" = on with compile on CUDA (see `EngineOptions.combo_kernels`)
    combo_kernels: bool | str = "auto"
    # fixed summation orders: gathers whose gradients are one-hot products, not atomic adds
    # (`EnsembleModel.take`), and no kernel configured by timing in a process that loads a
    # saved step (older inductors' RBLOCK scaling off, reductions kept out of combo
    # kernels; `EnsembleTrainer._configure_compiler`): reruns on the same compile cache
    # repeat bit for bit. "strict" adds inductor's deterministic mode, held for every graph
    # (`EngineOptions.inductor_deterministic`), so that a fresh compile and another machine
    # repeat too, at 25-50 % of the transformer's GPU training time (twenty-third session).
    # See docs/REPRODUCIBILITY.md. On every device: a CPU's indexed gathers also add in a
    # varying order in an ensemble of one run (eighteenth session, torch 2.13 on 2 cores).
    # "auto", which meant a GPU only until then, is kept as a synonym of true.
    deterministic: bool | str = True

    def validate(self, key: str) -> None:
        check(self.max_members >= 1, f"{key}.max_members", "must be positive")
        if isinstance(self.jobs_per_device, str):
            check(
                self.jobs_per_device == "auto", f"{key}.jobs_per_device", "expected auto or a count"
            )
        else:
            check(self.jobs_per_device >= 1, f"{key}.jobs_per_device", "must be positive")
        check(self.eval_chunk_rows >= 1, f"{key}.eval_chunk_rows", "must be positive")
        if isinstance(self.devices, str):
            check(
                self.devices in ("auto", "cpu"),
                f"{key}.devices",
                f"expected 'auto', 'cpu' or a list of GPU indices, got {self.devices!r}",
            )
        else:
            check(len(self.devices) > 0, f"{key}.devices", "an empty list names no device")
            check(
                len(set(self.devices)) == len(self.devices),
                f"{key}.devices",
                f"names a GPU twice: {self.devices}",
            )
        for k in ("cpu_threads", "cpu_workers"):
            v = getattr(self, k)
            if isinstance(v, str):
                check(v == "auto", f"{key}.{k}", "expected auto or a count")
            else:
                check(v >= 1, f"{key}.{k}", "must be positive")
        check(
            isinstance(self.pad_task_sizes, bool), f"{key}.pad_task_sizes", "expected true or false"
        )
        for k in ("compile", "cuda_graph", "combo_kernels"):
            v = getattr(self, k)
            check(isinstance(v, bool) or v == "auto", f"{key}.{k}", "expected true, false or auto")
        check(
            isinstance(self.deterministic, bool) or self.deterministic in ("auto", "strict"),
            f"{key}.deterministic",
            "expected true, false, auto or strict",
        )

    def device_names(self) -> list[str]:
        if self.devices == "cpu" or not torch.cuda.is_available():
            check(
                not (isinstance(self.devices, list) and self.devices),
                "engine.devices",
                f"asks for GPUs {self.devices}, but none is visible",
            )
            return ["cpu"]
        if self.devices == "auto":
            return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        n = torch.cuda.device_count()
        for i in self.devices:
            check(0 <= i < n, "engine.devices", f"names GPU {i}, but {n} are visible (0-{n - 1})")
        return [f"cuda:{i}" for i in self.devices]

    def cpu_processes(self, n_jobs: int) -> tuple[int, int | None]:
        """(worker processes, torch threads in each; None = torch's default) for `n_jobs`
        ensembles on a machine without GPUs."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        cores = cores or os.cpu_count() or 1
        wanted = cores if self.cpu_workers == "auto" else self.cpu_workers
        n = max(1, min(n_jobs, wanted))
        if self.cpu_threads != "auto":
            return n, self.cpu_threads
        return n, (None if n == 1 else max(1, cores // n))

    def slots(self, device: str) -> int:
        """How many jobs train at once on `device`.

        A job beside another must not call compiled code once set up: compiled code reads
        process-wide settings (TF32) and dynamo's caches at every call, and the other job's
        setup changes them. Replayed CUDA graphs read neither, nor does the eager CPU path."""
        opts = self.options(device)
        if self.jobs_per_device == "auto":
            return 2 if opts.cuda_graph else 1
        if self.jobs_per_device > 1 and opts.compile and not opts.cuda_graph:
            raise ValueError(
                f"engine.jobs_per_device is {self.jobs_per_device}, but on {device} the step "
                "is compiled without CUDA graphs; jobs side by side need CUDA graphs (a GPU "
                "with engine.cuda_graph on) or no compile"
            )
        return self.jobs_per_device

    def options(self, device: str, position: int = 0) -> EngineOptions:
        cuda = device.startswith("cuda")

        def pick(v):
            return cuda if v == "auto" else bool(v)

        return EngineOptions(
            device=device,
            compile=pick(self.compile),
            cuda_graph=pick(self.cuda_graph) and cuda,
            combo_kernels=pick(self.combo_kernels) and cuda,
            deterministic=self.deterministic in ("auto", True, "strict"),
            inductor_deterministic=self.deterministic == "strict",
            eval_chunk_rows=self.eval_chunk_rows,
            progress=self.progress,
            progress_position=position,
        )


@dataclass
class Job:
    job_id: str
    label: str
    members: list[Member]
    keep_params: bool

    @property
    def cost(self) -> float:
        cfg = self.members[0].config
        return len(self.members) * cfg.train.steps


def plan_jobs(
    members: list[Member],
    max_members: int,
    n_devices: int,
    label: str,
    keep_params: set[str],
    pad_task_sizes: bool = True,
) -> list[Job]:
    groups: dict[str, list[Member]] = defaultdict(list)
    for m in members:
        groups[group_key(m.config, m.data, pad_task_sizes)].append(m)
    chunks: list[list[Member]] = []
    for g in groups.values():
        n_chunks = -(-len(g) // max_members)
        size = -(-len(g) // n_chunks)
        chunks += [g[i : i + size] for i in range(0, len(g), size)]
    # More devices than jobs: halve the largest job while that keeps members ≥ 2.
    while len(chunks) < n_devices:
        chunks.sort(key=len, reverse=True)
        if len(chunks[0]) < 2:
            break
        big = chunks.pop(0)
        half = -(-len(big) // 2)
        chunks += [big[:half], big[half:]]
    version = ckpt.code_version()
    jobs = []
    for chunk in chunks:
        keep = any(m.run_id in keep_params for m in chunk)
        # whether results hold the final weights is part of a job's identity: a result or
        # checkpoint saved without them must not serve a rerun that saves weights
        ident = ckpt.fingerprint([version] + [m.identity() for m in chunk] + [{"keep": keep}])
        job_label = f"{label}[{chunk[0].run_id}..{chunk[-1].run_id}]x{len(chunk)}"
        jobs.append(Job(ident, job_label, chunk, keep))
    jobs.sort(key=lambda j: j.cost, reverse=True)
    return jobs


# Shrink once at least a quarter of the members have stopped and, in the members' steps still
# to train, at least COMPACT_MIN_SAVED_FRACTION of the budget is saved; never where the smaller
# ensemble needs a compile of its own. The rule reads only the step, the budget and which
# members are active, so every rerun shrinks at the same steps: an ensemble's size can change
# a member's bits (a batched kernel's choice may depend on it). Until the eighteenth session
# the rule weighed measured seconds (a step's time against the rebuild's), which can fall on
# either side of the line from one rerun to the next; simulated on the H100 fraction sweep's
# stop steps (189 runs, 100 000 steps; a step of E members taken as 0.32 + 0.044 E ms, a
# rebuild as 1.2 s), both rules shrink at the same steps, for any fraction from 1 % to 10 %,
# and give the 490 s the sweep trained in (BENCHMARKS.md).
COMPACT_AT_ACTIVE_FRACTION = 0.75
COMPACT_MIN_SAVED_FRACTION = 0.05


def should_compact(
    active: int, members: int, remaining_steps: int, total_steps: int, rebuild_compiles: bool
) -> bool:
    """Whether to continue in an ensemble of the `active` members out of `members`."""
    if active == 0 or active > COMPACT_AT_ACTIVE_FRACTION * members or rebuild_compiles:
        return False
    saved = remaining_steps * (1 - active / members)  # in steps of the current ensemble
    return saved >= COMPACT_MIN_SAVED_FRACTION * total_steps


def _compaction_policy(trainer: EnsembleTrainer) -> bool:
    active = len(trainer.active_members())
    total = trainer.cfg.train.steps
    return should_compact(
        active,
        trainer.E,
        total - trainer.step_host,
        total,
        trainer.rebuild_compiles(active),
    )


def _run_job(
    job: Job,
    opts: EngineOptions,
    checkpoint_dir: Path,
    device_name: str = "",
    abort: threading.Event | None = None,
) -> dict:
    """Train one job to the end, resuming from its checkpoint, dropping members that stopped
    early into their results as the ensemble shrinks. Stops with `JobAborted` once `abort` is
    set (a job beside it failed)."""
    result_path = checkpoint_dir / f"{job.job_id}.result.pt"
    done = ckpt.load(result_path, job.job_id)
    if done is not None:
        return done
    ck_path = checkpoint_dir / f"{job.job_id}.pt"
    finished: dict[str, MemberResult] = {}
    timings: list[dict] = []
    members = job.members
    saved = ckpt.load(ck_path, job.job_id)
    if saved is not None:
        finished, timings = saved["finished"], saved["timings"]
        remaining = set(saved["remaining"])
        members = [m for m in job.members if m.run_id in remaining]
    with setup_lock:  # one ensemble set up at a time; the others keep training
        sizes = None if saved is None else saved["trainer"].get("task_sizes")
        # a resumed job may have fewer runs left: it keeps the forward the saved ensemble had
        # (the whole job's, which compaction carries over), not one chosen for its new size
        job_opts = options_for_ensemble(opts, len(job.members))
        if saved is not None and "shares_prefixes" in saved["trainer"]:
            shares = saved["trainer"]["shares_prefixes"]
            job_opts = replace(job_opts, share_prefixes=shares, prefix_min_members=1)
        trainer = EnsembleTrainer(members, job_opts, label=job.label, task_sizes=sizes)
        if saved is not None:
            trainer.load_state_dict(saved["trainer"])
        trainer.prepare()

    writer = ckpt.BackgroundWriter()

    def save(t: EnsembleTrainer) -> None:
        writer.wait()  # the previous write still reads the trainer's snapshot buffers
        writer.submit(
            ck_path,
            {
                "fingerprint": job.job_id,
                "finished": dict(finished),
                "remaining": [m.run_id for m in t.members],
                "trainer": t.state_dict(reuse_host_buffers=True),
                # the ensembles done, and the one training now, so far (a resume goes on
                # from there in an ensemble, and a timing entry, of its own)
                "timings": list(timings) + ([_ensemble_timing(t)] if t.timing.steps else []),
            },
        )

    compact_first = saved is not None and saved["trainer"].get("compact_due", False)
    try:
        trainer = _train_to_end(
            trainer, save, finished, timings, job.keep_params, abort, compact_first
        )
    except BaseException:
        writer.wait(raise_error=False)  # the training error is the one to report
        raise
    writer.wait()  # a checkpoint on disk is whole before the job's result replaces it
    timing = {
        "label": job.label,
        "members": len(job.members),
        "device": device_name or opts.device,
        "ensembles": len(timings),
        "steps": trainer.step_host,
        **{
            k: sum(t[k] for t in timings)
            for k in ("setup_s", "compile_s", "train_s", "checkpoint_s", "model_steps")
        },
        # where each ensemble's compiled functions came from: traced, or a saved one loaded
        "compiled_from": [t["compiled_from"] for t in timings],
    }
    out = {
        "fingerprint": job.job_id,
        "results": [finished[m.run_id] for m in job.members],
        "timing": timing,
    }
    ckpt.save(result_path, out)
    ck_path.unlink(missing_ok=True)
    return out


def _ensemble_timing(trainer: EnsembleTrainer) -> dict:
    return dict(vars(trainer.timing), members=trainer.E)


def _train_to_end(
    trainer, save, finished: dict, timings: list, keep_params: bool, abort, compact_first=False
):
    """Run `trainer` to the step budget, moving on in smaller ensembles as members stop early;
    finished members' results go into `finished`, each ensemble's timing into `timings`.
    Returns the last ensemble. `compact_first`: the trainer was loaded from the checkpoint of
    a step where it was to shrink, so it shrinks before training on, as it did then."""
    while True:
        if compact_first:
            status, compact_first = "compact", False
        else:
            status = trainer.run(on_checkpoint=save, should_compact=_compaction_policy, abort=abort)
            timings.append(_ensemble_timing(trainer))
        results = trainer.results(keep_params=keep_params)
        if status == "done":
            finished.update({r.run_id: r for r in results})
            return trainer
        keep = trainer.active_members()
        finished.update({r.run_id: r for i, r in enumerate(results) if i not in keep})
        with setup_lock:
            trainer = trainer.subset(keep)
            trainer.prepare()
        # at once: the last checkpoint holds the ensemble before it shrank, and a resume
        # from it would train every member to the next checkpoint (`run` decides to shrink
        # only at the evaluation where that happens, not again on load)
        save(trainer)


def worker_visible_devices(device: str, inherited: str | None) -> str:
    """CUDA_VISIBLE_DEVICES for the worker that owns `device` ("cuda:i", i counted among the
    GPUs this process sees, themselves possibly narrowed by an inherited setting)."""
    index = int(device.split(":")[1])
    if inherited:
        return inherited.split(",")[index].strip()
    return str(index)


def _serve_device(
    jobs: list[Job],
    next_job,
    on_done,
    engine: EngineConfig,
    device: str,
    checkpoint_dir: Path,
    rank: int = 0,
    device_name: str = "",
    spread=None,
) -> None:
    """Train the jobs that `next_job()` hands out (an index, None when there are no more) on
    `device`, `engine.slots(device)` at a time: one thread and CUDA stream per slot. Reports
    each finished job as `on_done(index, output)`. If a job fails, the jobs beside it stop at
    their next evaluation and the first failure is raised.

    With several devices, `spread()` returns once every device's first slot has taken its
    first job: only then do the other slots take jobs, so that the first jobs go one to each
    GPU rather than side by side onto whichever worker started first (fourteenth session: two
    jobs on two GPUs both landed on the first). The first slot trains meanwhile: it waits
    for no other device."""
    if device == "cpu":
        # Once a run has memorised, cross-entropy gradients and Adam's moments decay into
        # subnormal floats, which x86 CPUs compute ~100x slower: a full-batch seed-004 run sat
        # at 167 ms a step from its memorisation on (16 ms before it). Flushing them to zero
        # changes only values below 1.2e-38.
        torch.set_flush_denormal(True)
    n = engine.slots(device)
    abort = threading.Event()
    first_taken = threading.Event()

    def spread_then_release() -> None:
        try:
            spread()
        finally:
            first_taken.set()

    def serve(slot: int) -> None:
        opts = engine.options(device, position=rank * n + slot)
        on_gpu = n > 1 and device.startswith("cuda")
        stream = (
            torch.cuda.stream(torch.cuda.Stream(device)) if on_gpu else contextlib.nullcontext()
        )
        with stream:
            if slot > 0:
                first_taken.wait()
            first_pull = slot == 0
            while not abort.is_set():
                idx = next_job()
                if first_pull:
                    first_pull = False
                    if spread is None:  # one device: nothing to wait for
                        first_taken.set()
                    else:
                        threading.Thread(
                            target=spread_then_release, name="job-spread", daemon=True
                        ).start()
                if idx is None:
                    return
                on_done(idx, _run_job(jobs[idx], opts, checkpoint_dir, device_name, abort))

    if n == 1:
        serve(0)
        return
    errors: list[BaseException] = []

    def guarded(slot: int) -> None:
        try:
            serve(slot)
        except BaseException as e:
            errors.append(e)
            abort.set()
            first_taken.set()  # a slot still waiting for the first job then sees the abort

    threads = [threading.Thread(target=guarded, args=(i,), name=f"job-slot-{i}") for i in range(n)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except BaseException:  # Ctrl-C: stop the slots at their next evaluation, then leave
        abort.set()
        first_taken.set()
        for t in threads:
            t.join()
        raise
    if errors:
        raise next((e for e in errors if not isinstance(e, JobAborted)), errors[0])


# how often a worker looks whether the stage that started it is still there
PARENT_POLL_S = 1.0


def _exit_with_parent() -> None:
    """In a worker: end this process once the stage that started it is gone. A stage killed
    outright (SIGKILL, or SIGTERM, which skips Python's clean-up) leaves its daemon workers
    running: they would go on writing the checkpoints that a rerun of the stage, with its
    own workers, writes and reads at the same paths, and hold their GPU's memory."""
    import multiprocessing
    import time

    parent = multiprocessing.parent_process()

    def watch() -> None:
        while parent.is_alive():
            time.sleep(PARENT_POLL_S)
        os._exit(1)  # a checkpoint write cut short leaves only its temporary file

    if parent is not None:
        threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _worker(
    rank: int, device: str, engine: EngineConfig, jobs, queue, results, ckdir: str, spread, threads
):
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    _exit_with_parent()
    try:
        served = device  # the device as this worker names it
        if device == "cpu":
            if threads is not None:
                torch.set_num_threads(threads)
        else:
            # Each worker sees only its own GPU, as cuda:0. Compiled code is cached per
            # device, so this way every worker reuses what any of them (or an earlier run)
            # compiled, instead of each GPU compiling every graph afresh.
            inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
            os.environ["CUDA_VISIBLE_DEVICES"] = worker_visible_devices(device, inherited)
            torch.cuda.set_device(0)
            served = "cuda:0"
        _serve_device(
            jobs,
            queue.get,
            lambda idx, _: results.put(("done", idx, None)),
            engine,
            served,
            Path(ckdir),
            rank=rank,
            device_name=device,
            spread=spread.wait,
        )
    except BaseException:
        results.put(("error", rank, traceback.format_exc()))


def train_members(
    members: list[Member],
    engine: EngineConfig,
    checkpoint_dir: Path,
    label: str,
    keep_params: set[str] = frozenset(),
):
    """Train every member; returns ({run_id: MemberResult}, [timing per job])."""
    devices = engine.device_names()
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    jobs = plan_jobs(
        members, engine.max_members, len(devices), label, set(keep_params), engine.pad_task_sizes
    )
    outputs: list[dict] = []
    threads = None
    if devices == ["cpu"]:
        n_workers, threads = engine.cpu_processes(len(jobs))
        devices = ["cpu"] * n_workers
        if n_workers == 1 and threads is not None:
            torch.set_num_threads(threads)
    if len(devices) == 1:
        by_index: dict[int, dict] = {}
        pending = iter(range(len(jobs)))
        hand_out = threading.Lock()

        def next_job() -> int | None:
            with hand_out:
                return next(pending, None)

        _serve_device(jobs, next_job, by_index.__setitem__, engine, devices[0], checkpoint_dir)
        outputs = [by_index[i] for i in range(len(jobs))]
    else:
        ctx = torch.multiprocessing.get_context("spawn")
        queue, results = ctx.Queue(), ctx.Queue()
        spread = ctx.Barrier(len(devices))  # every GPU's first slot has taken a job
        for i in range(len(jobs)):
            queue.put(i)
        for _ in range(len(devices) * engine.slots(devices[0])):  # one stop per slot
            queue.put(None)
        procs = [
            ctx.Process(
                target=_worker,
                args=(r, d, engine, jobs, queue, results, str(checkpoint_dir), spread, threads),
                daemon=True,
            )
            for r, d in enumerate(devices)
        ]
        for p in procs:
            p.start()
        finished = 0
        try:
            while finished < len(jobs):
                try:
                    kind, _, tb = results.get(timeout=5)
                except queue_module.Empty:
                    # a worker killed outside Python (out of memory, a crash in a kernel)
                    # reports nothing: without this the stage would wait for it forever
                    dead = [p for p in procs if p.exitcode not in (None, 0)]
                    if dead:
                        raise RuntimeError(
                            f"a training worker died with exit code {dead[0].exitcode}"
                        ) from None
                    continue
                if kind == "error":
                    raise RuntimeError(f"a training worker failed:\n{tb}")
                finished += 1
        finally:
            for p in procs:
                if p.is_alive() and finished < len(jobs):
                    p.terminate()
                p.join()
        outputs = [ckpt.load(checkpoint_dir / f"{j.job_id}.result.pt", j.job_id) for j in jobs]
    by_run: dict[str, MemberResult] = {}
    for out in outputs:
        for r in out["results"]:
            by_run[r.run_id] = r
    return by_run, [o["timing"] for o in outputs]
