"""Benchmark the training engine against the plain eager reference loop, in one process.

    python -m grokpipe.bench [--device cuda] [--out bench.json] [--quick]

(a) reference loop steps/s; (b) engine, one run; (c) engine ensembles (default 8, 64, 256):
steps/s, model-steps/s, peak device memory; (d) seconds and steps to 99 % validation accuracy on
x/y mod 97 with 50 % training data, 3 seeds, reference vs engine (compile time reported apart).
`--multi-gpu` adds a two-ensemble workload through the multi-device runner on 1 GPU and on all.
Prints a table last and writes every number to JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import queue as queue_module
import statistics
import tempfile
import time
from pathlib import Path

import torch

from grokpipe.reference import train_reference
from grokpipe.train.ensemble import EngineOptions, EnsembleTrainer
from grokpipe.train.members import members_from_block
from grokpipe.train.runner import EngineConfig


def power_block(
    op: str,
    p: int,
    steps: int,
    seeds: list[int],
    every: int = 100,
    early_stop: float | None = None,
    precision: str = "tf32",
) -> dict:
    """An experiment block with Power et al.'s model and optimiser (SPEC §1 defaults)."""
    return {
        "task": "arithmetic",
        "data": {"op": op, "p": p, "train_fraction": 0.5},
        "model": {
            "family": "transformer",
            "n_layers": 2,
            "d_model": 128,
            "n_heads": 4,
            "d_ff": 512,
        },
        "train": {
            "steps": steps,
            "batch_size": 512,
            "lr": 1e-3,
            "weight_decay": 1.0,
            "betas": [0.9, 0.98],
            "warmup_steps": 10,
            "early_stop": early_stop,
            "precision": precision,
        },
        "eval": {"every": every, "log_points": 0},
        "grid": {"seed": seeds},
    }


def _peak_reset(device: str) -> None:
    """Start a measurement's peak from what it holds itself: the trainers measured before are
    freed first (a trainer's compiled step refers back to it, so only the collector frees
    it, and the peak would otherwise start above their parameters and graph pools)."""
    if device.startswith("cuda"):
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float | None:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return None


def bench_reference(device: str, steps: int, precision: str) -> dict:
    m = members_from_block(power_block("x/y", 97, steps, [0]))[0]
    args = (m.data, m.train_idx, m.val_idx)
    train_reference(*args, min(100, steps), device, precision=precision)  # warm-up
    r = train_reference(*args, steps, device, precision=precision)
    return {
        "steps": r.steps,
        "seconds": r.seconds,
        "steps_per_s": r.steps / r.seconds,
        "precision": precision,
    }


def bench_engine(
    device: str, members: int, steps: int, opts: EngineOptions, precision: str
) -> dict:
    block = power_block("x/y", 97, steps, list(range(members)), precision=precision)
    trainer = EnsembleTrainer(members_from_block(block), opts, label=f"bench x{members}")
    _peak_reset(device)
    trainer.prepare()
    compile_peak = _peak_gib(device)
    if device.startswith("cuda"):  # training's own peak, apart from compiling and capture
        torch.cuda.reset_peak_memory_stats()
    trainer.run()
    t = trainer.timing
    return {
        "members": members,
        "steps": t.steps,
        "seconds": t.train_s,
        "compile_seconds": t.compile_s,
        # "traced" in this process, or a step an earlier process saved ("disk", "memory")
        "compiled_from": t.compiled_from.get("train_step", "eager"),
        "steps_per_s": t.steps / t.train_s,
        "model_steps_per_s": members * t.steps / t.train_s,
        "peak_gib": _peak_gib(device),
        "compile_peak_gib": compile_peak,
    }


def bench_time_to_grok(device: str, opts: EngineOptions, budget: int, precision: str) -> dict:
    """x/y mod 97, 50 % data, 3 seeds: seconds and steps until validation ≥ 0.99."""
    seeds = [0, 1, 2]
    out = {"reference": [], "engine": []}
    block = power_block("x/y", 97, budget, seeds, every=100, early_stop=0.99, precision=precision)
    members = members_from_block(block)
    first = members[0]  # untimed: the process's first kernels load outside the timed seeds
    train_reference(first.data, first.train_idx, first.val_idx, 100, device, precision=precision)
    for m in members:
        r = train_reference(
            m.data,
            m.train_idx,
            m.val_idx,
            budget,
            device,
            seed=m.config.seed,
            stop_at=0.99,
            precision=precision,
        )
        out["reference"].append(
            {"seed": m.config.seed, "steps": r.steps, "seconds": r.seconds, "reached": r.reached}
        )
    fast = EngineOptions(**{**vars(opts), "stop_check_every": 1})
    for m in members:
        trainer = EnsembleTrainer([m], fast, label=f"grok seed {m.config.seed}")
        trainer.run()
        res = trainer.results()[0]
        reached = bool(len(res.steps) and res.metrics["val_acc"][-1] >= 0.99)
        out["engine"].append(
            {
                "seed": m.config.seed,
                "steps": int(res.steps[-1]),
                "seconds": trainer.timing.train_s,
                "compile_seconds": trainer.timing.compile_s,
                "reached": reached,
            }
        )
    together = EnsembleTrainer(members, fast, label="grok 3 seeds together")
    together.run()
    out["engine_3_seeds_one_ensemble_seconds"] = together.timing.train_s
    for k in ("reference", "engine"):
        out[f"{k}_reached"] = f"{sum(r['reached'] for r in out[k])}/{len(out[k])}"
        out.update(_medians_to_99(out[k], k))
    return out


def _medians_to_99(runs: list[dict], side: str) -> dict:
    """Median seconds and steps to 99 % over the seeds that got there: a seed out of budget
    would add the budget's time as if it were a time to 99 %. None (no median) where fewer
    than two of the seeds got there."""
    reached = [r for r in runs if r["reached"]]
    if len(reached) < 2:
        return {f"{side}_median_seconds": None, f"{side}_median_steps": None}
    return {
        f"{side}_median_seconds": statistics.median(r["seconds"] for r in reached),
        f"{side}_median_steps": statistics.median(r["steps"] for r in reached),
    }


def pooled_members(parts: list[tuple[str, list[int]]], n_steps: int, precision: str) -> list:
    """The runs of several operations, (op, seeds) each, in one list numbered m0000.. in order.
    S5 beside x/y mod 97 is a pool the runner pads into one ensemble (`pad_task_sizes`)."""
    out = []
    for i, (op, seeds) in enumerate(parts):
        out += members_from_block(power_block(op, 97, n_steps, seeds, precision=precision), f"p{i}")
    for i, m in enumerate(out):
        m.run_id = f"m{i:04d}"
    return out


def _multi_measure(devices: list[int] | str, n_steps: int, seeds: list[int], precision: str, queue):
    """One measurement, in its own process (see `bench_multi_gpu`)."""
    from grokpipe.train.runner import train_members

    members = pooled_members([("x/y", seeds), ("s5", seeds)], n_steps, precision)
    engine = EngineConfig(devices=devices, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        _, timings = train_members(members, engine, Path(tmp), "multi")
        wall = time.perf_counter() - t0
    gpus = 0 if devices == "cpu" else len(devices)
    queue.put({"gpus": gpus, "wall_seconds": wall, "jobs": timings})


def bench_multi_gpu(steps: int, members: int, precision: str) -> dict:
    """Two tasks' runs (x/y mod 97 and S5, `members` each) through the runner, as a train stage
    deals them: on one GPU they train as one padded ensemble (`engine.pad_task_sizes`), on
    several GPUs that ensemble is halved, one half per GPU.

    Each measurement runs as a pipeline train stage does: a fresh process that loads the steps
    saved beforehand, as the precompile stage saves them. Here two short warm-up runs save
    them, one on one GPU and one on all, since the halves are ensembles of other shapes (one
    task each, unpadded) and compile other steps. One GPU trains in the measuring process;
    several GPUs add one worker process per GPU. Timed from the call into the runner to its
    return, so both pay their loads, neither the imports."""
    ctx = torch.multiprocessing.get_context("spawn")
    out = {}
    n = torch.cuda.device_count()
    one, every = ([0], list(range(n))) if n else ("cpu", "cpu")  # CPU: the plumbing only
    # the warm-ups train every member for a few steps: an ensemble of fewer runs takes another
    # forward (shared prefixes only from `CUDA_PREFIX_MIN_MEMBERS` runs up), and would save a
    # step that no measurement loads
    seeds = list(range(members))
    runs = [("warm_up_one_gpu", one, 200, seeds)]
    if every != one:
        runs.append(("warm_up_all_gpus", every, 200, seeds))
    runs += [("one_gpu", one, steps, seeds), ("all_gpus", every, steps, seeds)]
    for name, devices, n_steps, seeds in runs:
        queue = ctx.Queue()
        proc = ctx.Process(target=_multi_measure, args=(devices, n_steps, seeds, precision, queue))
        proc.start()
        while True:
            try:
                out[name] = queue.get(timeout=5)
                break
            except queue_module.Empty:
                if not proc.is_alive():
                    raise RuntimeError(
                        f"multi-GPU measurement {name} failed (exit {proc.exitcode})"
                    ) from None
        proc.join()
        print(name, out[name], flush=True)
    out["ratio"] = out["all_gpus"]["wall_seconds"] / out["one_gpu"]["wall_seconds"]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--steps",
        type=int,
        default=3000,
        help="timed steps of the reference and of one run; an ensemble of E runs times "
        "steps / (E // 8), at least 200, so that every size takes about as long",
    )
    ap.add_argument("--sizes", default="8,64,256")
    ap.add_argument("--precision", default="tf32", choices=["fp32", "tf32", "bf16"])
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--grok-budget", type=int, default=20000)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: ref,single,sizes,grok")
    ap.add_argument("--multi-gpu", action="store_true", help="one GPU vs all, two ensembles")
    ap.add_argument("--multi-steps", type=int, default=20000, help="steps of each ensemble")
    ap.add_argument("--multi-members", type=int, default=64, help="members of each ensemble")
    ap.add_argument(
        "--deterministic",
        choices=["auto", "true", "false"],
        default="auto",
        help="engine.deterministic (auto: on a GPU, as the pipeline trains)",
    )
    ap.add_argument("--out", default="bench.json")
    args = ap.parse_args(argv)
    dev = args.device
    cuda = dev.startswith("cuda")
    # the engine as `dvc repro` runs it: the engine block's defaults, resolved for the device
    # as the train stages resolve them (combo kernels with compile, deterministic gathers on
    # a GPU)
    engine = EngineConfig(
        compile=False if args.no_compile else "auto",
        combo_kernels=False if args.no_compile else "auto",
        deterministic={"auto": "auto", "true": True, "false": False}[args.deterministic],
        progress=False,
    )
    opts = engine.options(dev)
    if cuda:  # the reference loop must run at the engine's matmul precision too
        torch.set_float32_matmul_precision("high" if args.precision == "tf32" else "highest")
    skip = set(filter(None, args.skip.split(",")))
    out = Path(args.out)

    def save() -> None:
        """Written after every measurement: a run cut short by a time limit keeps its parts."""
        out.write_text(json.dumps(report, indent=1))

    report = {
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "precision": args.precision,
        "args": vars(args),
    }
    if "ref" not in skip:
        report["reference"] = bench_reference(dev, args.steps, args.precision)
        print("reference", report["reference"], flush=True)
        save()
    report["engine"] = []
    if "single" not in skip:
        report["engine"].append(bench_engine(dev, 1, args.steps, opts, args.precision))
        print("engine x1", report["engine"][-1], flush=True)
        save()
    if "sizes" not in skip:
        for size in [int(s) for s in args.sizes.split(",") if s]:
            steps = max(200, args.steps // max(1, size // 8))
            report["engine"].append(bench_engine(dev, size, steps, opts, args.precision))
            print(f"engine x{size}", report["engine"][-1], flush=True)
            save()
    if "grok" not in skip:
        report["time_to_grok"] = bench_time_to_grok(dev, opts, args.grok_budget, args.precision)
        save()
    if args.multi_gpu:
        report["multi_gpu"] = bench_multi_gpu(args.multi_steps, args.multi_members, args.precision)
    save()
    print_table(report)


def print_table(r: dict) -> None:
    print(f"\n== grokpipe bench: {r['device']}, torch {r['torch']}, {r['precision']} ==")
    ref = r.get("reference")
    if ref:
        print(
            f"reference loop (1 run)      {ref['steps_per_s']:10.1f} steps/s  ({ref['precision']})"
        )
    for e in r["engine"]:
        speed = f" = {e['steps_per_s'] / ref['steps_per_s']:.1f}x ref" if ref else ""
        mem = f"  peak {e['peak_gib']:.2f} GiB" if e["peak_gib"] is not None else ""
        print(
            f"engine x{e['members']:<4d} {e['steps_per_s']:10.1f} steps/s "
            f"{e['model_steps_per_s']:11.1f} model-steps/s{speed}{mem}"
            f"  ({e['steps']} steps; compile {e['compile_seconds']:.1f} s, {e['compiled_from']})"
        )
    g = r.get("time_to_grok")
    if g:
        for k in ("reference", "engine"):
            runs = ", ".join(
                f"{x['steps']} st/{x['seconds']:.2f} s{'' if x['reached'] else ' (not reached)'}"
                for x in g[k]
            )
            seconds, steps = g[f"{k}_median_seconds"], g[f"{k}_median_steps"]
            median = "no median" if seconds is None else f"median {seconds:.2f} s ({steps} steps)"
            print(f"x/y mod 97 to 99% val, {k:9s}: {median}, {g[f'{k}_reached']} reached [{runs}]")
        print(
            f"x/y mod 97, 3 seeds as one ensemble: {g['engine_3_seeds_one_ensemble_seconds']:.2f} s"
        )
    m = r.get("multi_gpu")
    if m:
        print(
            f"two ensembles: 1 GPU {m['one_gpu']['wall_seconds']:.1f} s, "
            f"{m['all_gpus']['gpus']} GPUs {m['all_gpus']['wall_seconds']:.1f} s "
            f"(ratio {m['ratio']:.2f})"
        )


if __name__ == "__main__":
    main()
