"""Device probe: compile time, step rate and kernel profile of engine variants.

Diagnostics for BENCHMARKS.md, not a test. Each argument is one measurement,
`E:precision:flags[:steps]`, where flags is any of
  c  torch.compile the step (else eager + CUDA graph)
  s  share prefixes (`Transformer.forward_prefixed`)
  d  compile ensemble and task sizes as dynamic (cache reuse across ensembles)
  k  inductor's combo kernels (as the engine compiles ensembles of 2+ runs; see EngineOptions)
  P  profile the compiled step (top kernels) instead of timing it
  g  deterministic gathers (`engine.deterministic`: no atomic adds in their backward)
  S  inductor's deterministic mode held for every graph (`engine.deterministic: strict`;
     without it no graph has the mode)
  b  the transformer's residual stream stored in bfloat16 (`EnsembleModel.residual_dtype`;
     with precision bf16: every activation between products in bfloat16, LayerNorm statistics
     and logits in float32): what bfloat16 activations would gain, science unchecked
  r  after timing, train a second ensemble of the same runs and say whether its history
     (losses and accuracies at every evaluation) is bit-identical to the first one's
  p  padded, as the pipeline's ops and fraction sweep are: a sixth of the runs are S5 (120
     classes) beside x/y mod 97, one ensemble padded to S5's sizes, the extra classes masked
  L  compiled on a two-run sample (`stages.precompile.sample`, with the whole ensemble's
     forward), first run, then reused by the measured ensemble with the size hints and kernel
     choices the sample gave it: how the precompile stage compiled until the fifteenth
     session, which found this 6-32 % slower at 51 members than a step compiled at 51; the
     stage now compiles on the largest ensemble; with `GP_SAMPLE_EVERY=k` the sample is every
     k-th run instead (e.g. 4: a quarter of the ensemble, both tasks when padded), to ask
     whether kernels tuned at that size serve the whole ensemble as well
Example: `python scripts/gpu_probe.py 64:tf32:c 64:tf32:cs 64:tf32:csd 64:bf16:csd 64:tf32:csdP`
The pipeline's step at the sweep's largest ensemble, timed and profiled:
`python scripts/gpu_probe.py 189:bf16:csdkgp 189:bf16:csdkgpP`
`GP_INDUCTOR="max_autotune_gemm=1,triton.autotune_pointwise=0"` sets inductor config options
for the whole probe, over the engine's own where both set one (`combo_kernels_pointwise_only`).
Every measurement traces its own step: a step saved by an earlier probe (`precompiled`) may have
been compiled with other inductor options, which its key does not hold.
`GP_MM_CONFIGS="64,128,64,3,4;128,128,64,3,8"` replaces the configurations inductor's Triton
GEMM templates choose among (BLOCK_M, BLOCK_N, BLOCK_K, stages, warps; each scaled down to the
product's sizes as inductor does): with `max_autotune_gemm=1,max_autotune_gemm_backends=TRITON`
in GP_INDUCTOR and one configuration, every product is a Triton template (bias, GELU and casts
fused in its epilogue) and nothing is timed at compile, where the default twenty configurations
took ~6.6 s of timing per product shape (thirtieth session). Measured at 64 runs: 8-23 %
slower than cuBLAS with separate pointwise kernels (BENCHMARKS.md, thirty-first session).
`GP_BLAS=cublaslt` makes every matrix product go through cuBLASLt (else torch's default).
`GP_TUNELOG=1` counts and names the kernels inductor configures by timing at first launch.
`GP_DETERMINISTIC=1` runs the whole probe under `torch.use_deterministic_algorithms(True)`
(inductor then avoids atomic adds). A table of every timed measurement is printed last.
"""

import logging
import os
import sys
import time

import torch
import torch._inductor.config as inductor_config

from grokpipe.bench import pooled_members
from grokpipe.train.ensemble import EngineOptions, EnsembleTrainer, options_for_ensemble
from stages.precompile import sample

if os.environ.get("GP_BLAS"):  # "cublas" or "cublaslt": the library of every matrix product
    torch.backends.cuda.preferred_blas_library(os.environ["GP_BLAS"])
if os.environ.get("GP_DETERMINISTIC"):
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts
    torch.use_deterministic_algorithms(True)

T0 = time.perf_counter()
DEVICE = os.environ.get("GP_DEVICE", "cuda")  # "cpu" to smoke-test the probe itself
CUDA = DEVICE.startswith("cuda")
ROWS = []


def override_inductor() -> None:
    for item in filter(None, os.environ.get("GP_INDUCTOR", "").split(",")):
        key, value = item.split("=")  # dotted keys reach nested options: triton.autotune_pointwise
        *parents, leaf = key.split(".")
        section = inductor_config
        for part in parents:
            section = getattr(section, part)
        current = getattr(section, leaf)
        # strings stay strings (max_autotune_gemm_backends=TRITON); flags and counts are ints
        setattr(section, leaf, value if isinstance(current, str) else type(current)(int(value)))


override_inductor()


MM_CONFIG_LISTS = 0  # configuration lists the hook built: 0 means no product was a template


def override_mm_configs() -> None:
    """Replace the Triton GEMM templates' configuration list (`GP_MM_CONFIGS`)."""
    spec = os.environ.get("GP_MM_CONFIGS")
    if not spec:
        return
    from torch._inductor.template_heuristics import triton as heuristics

    configs = [heuristics.GemmConfig(*map(int, item.split(","))) for item in spec.split(";")]
    original = heuristics.BaseConfigHeuristic.preprocess_mm_configs

    def preprocess(self, *args, **kwargs):
        global MM_CONFIG_LISTS
        # m, n, k come first; the list comes as `configs=` (get_mm_configs) or fourth
        if "configs" in kwargs or len(args) < 4:
            kwargs["configs"] = configs
        else:
            args = (*args[:3], configs, *args[4:])
        MM_CONFIG_LISTS += 1
        return original(self, *args, **kwargs)

    heuristics.BaseConfigHeuristic.preprocess_mm_configs = preprocess
    print(f"GEMM template configurations: {configs}", flush=True)


override_mm_configs()
# the engine sets some options itself as it configures a step (combo kernels, and for
# `engine.deterministic` the RBLOCK scaling and pointwise-only combos): GP_INDUCTOR's values
# are set again after it, and win
_engine_configure = EnsembleTrainer._configure_compiler


def _configure_then_override(self) -> None:
    _engine_configure(self)
    override_inductor()


EnsembleTrainer._configure_compiler = _configure_then_override


class TunedKernels(logging.Handler):
    """Names the kernels inductor configures by timing candidates at their first launch
    (`GP_TUNELOG=1`). A reduction among them ("per", "red") may sum in another order in
    another process; a pointwise one ("poi") does not change a result."""

    names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "Benchmark all input configs for" in message:
            TunedKernels.names.append(message.split(" for ", 1)[1].split(",", 1)[0])


if os.environ.get("GP_TUNELOG"):
    _tune_log = logging.getLogger("torch._inductor.runtime.triton_heuristics")
    _tune_log.setLevel(logging.DEBUG)
    _tune_log.addHandler(TunedKernels())


def log(*a):
    print(f"[{time.perf_counter() - T0:7.1f}s]", *a, flush=True)


def members(E, precision, flags, steps):
    n_s5 = max(1, E // 6) if "p" in flags else 0
    parts = [("x/y", list(range(E - n_s5))), ("s5", list(range(n_s5)))]
    return pooled_members([p for p in parts if p[1]], steps, precision)


def options(flags, loaded=False):
    return EngineOptions(
        device=DEVICE,
        compile="c" in flags,
        cuda_graph="P" not in flags,
        progress=False,
        share_prefixes="s" in flags,
        prefix_min_members=1,  # as the flag says, at any size
        dynamic_sizes="d" in flags,
        combo_kernels="k" in flags,
        deterministic="g" in flags,
        inductor_deterministic="S" in flags,
        precompiled=loaded,
    )


def trainer(E, precision, flags, steps):
    t = _trainer(E, precision, flags, steps)
    if "b" in flags:
        t.model.residual_dtype = torch.bfloat16  # before the step is traced (`prepare`)
    return t


def _trainer(E, precision, flags, steps):
    runs = members(E, precision, flags, steps)
    if "L" not in flags:
        return EnsembleTrainer(runs, options(flags))
    # the precompile stage until the fifteenth session: the sample, with the whole ensemble's
    # forward, compiled and run (CUDA-graph capture runs it, which autotunes its kernels at the
    # sample's sizes)
    opts = options_for_ensemble(options(flags, loaded=True), len(runs))
    every = int(os.environ.get("GP_SAMPLE_EVERY", 0))
    first = EnsembleTrainer(runs[::every] if every else sample(runs), opts, label="probe sample")
    first.prepare()
    log(
        f"E={E} {precision} {flags}: sample of {len(first.members)} compiled in "
        f"{first.timing.compile_s:.1f}s ({first.timing.compiled_from})"
    )
    return EnsembleTrainer(runs, opts)


def prepared(E, precision, flags, steps):
    """A trainer with its step compiled and captured (the compile is timed here)."""
    t = trainer(E, precision, flags, steps)
    t.prepare()
    log(f"E={E} {precision} {flags}: prepare {t.timing.compile_s:.1f}s ({t.timing.compiled_from})")
    return t


def timed(t, E, precision, flags):
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    t.run()
    sps = t.timing.steps / t.timing.train_s
    row = (E, precision, flags, t.timing.compile_s, sps, E * sps)
    ROWS.append(row + (torch.cuda.max_memory_allocated() / 2**30 if CUDA else 0.0,))
    log(f"E={E} {precision} {flags}: {sps:.0f} steps/s, {row[5]:.0f} m-s/s")
    if "r" in flags:
        again = prepared(E, precision, flags, t.cfg.train.steps)
        again.run()
        a, b = t.history.cpu(), again.history.cpu()
        same = torch.equal(a.nan_to_num(-1.0), b.nan_to_num(-1.0))
        diff = (a - b).abs().nan_to_num(0.0).max().item()
        log(
            f"E={E} {precision} {flags}: repeat {'bit-identical' if same else 'differs'}"
            f" (largest difference {diff:.3g})"
        )


def profile(E, precision, flags, steps=20):
    """Top CUDA kernels of the compiled step, without graph capture so each kernel shows."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    t = trainer(E, precision, flags, 100)
    t.prepare()
    for _ in range(5):
        t._train_fn()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            t._train_fn()
        torch.cuda.synchronize()
    # device activity only: the profile also lists the host's launch calls (`cuLaunchKernel`,
    # `cudaMemsetAsync`), which until the seventeenth session were counted as kernels too
    rows = sorted(
        (e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA),
        key=lambda e: -e.device_time_total,
    )
    total = sum(e.device_time_total for e in rows)
    n = sum(e.count for e in rows if "Memset" not in e.key) // steps
    memsets = sum(e.count for e in rows if "Memset" in e.key) // steps
    log(
        f"profile E={E} {precision} {flags}: {total / steps / 1e3:.3f} ms/step, {n} kernels"
        f" and {memsets} memsets"
    )
    top = int(os.environ.get("GP_TOP", 30))  # kernels listed (and with GP_KERNELS, dumped)
    for e in rows[:top]:
        log(f"  {e.device_time_total / steps / 1e3:7.3f} ms {e.count // steps:3d}x  {e.key[:100]}")
    if os.environ.get("GP_KERNELS"):  # a file to write the top Triton kernels' sources to
        dump_kernels([e.key for e in rows[:top]], os.environ["GP_KERNELS"])


def dump_kernels(names, path):
    """Copy the source of the named Triton kernels out of inductor's cache (newest first)."""
    from pathlib import Path

    from torch._inductor.runtime.cache_dir_utils import cache_dir

    files = sorted(Path(cache_dir()).rglob("*.py"), key=lambda f: -f.stat().st_mtime)
    with open(path, "a") as out:
        for name in names:
            if not name.startswith("triton_"):
                continue
            for f in files:
                text = f.read_text(errors="replace")
                at = text.find(f"def {name}(")
                if at >= 0:
                    out.write(f"##### {name} ({f.name})\n{text[max(0, at - 600) : at + 6000]}\n")
                    break


def wait_for(path):
    """Time only once another probe process (compiling beside this one) has finished timing."""
    from pathlib import Path

    while path and not Path(path).exists():
        time.sleep(1)


if __name__ == "__main__":
    specs = []
    for spec in sys.argv[1:]:
        parts = spec.split(":")
        E, precision, flags = int(parts[0]), parts[1], parts[2]
        steps = int(parts[3]) if len(parts) > 3 else 1000
        specs.append((E, precision, flags, steps))
    # compile everything first, then time: two probes may compile side by side and time in turn
    ready = [(s, prepared(*s)) for s in specs if "P" not in s[2]]
    log(torch._dynamo.utils.compile_times())
    if os.environ.get("GP_COMPILED"):  # for a probe that waits until this one has compiled
        open(os.environ["GP_COMPILED"], "w").close()
    wait_for(os.environ.get("GP_WAIT_FOR"))
    for (E, precision, flags, _), t in ready:
        timed(t, E, precision, flags)
    for E, precision, flags, _ in specs:
        if "P" in flags:
            profile(E, precision, flags)
    if os.environ.get("GP_DONE"):
        open(os.environ["GP_DONE"], "w").close()
    print("\n| members | precision | flags | compile s | steps/s | model-steps/s | peak GiB |")
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: |")
    for E, prec, flags, comp, sps, msps, peak in ROWS:
        print(f"| {E} | {prec} | {flags} | {comp:.1f} | {sps:.0f} | {msps:.0f} | {peak:.2f} |")
    if os.environ.get("GP_MM_CONFIGS"):
        print(f"GEMM template configuration lists built: {MM_CONFIG_LISTS}")
    if os.environ.get("GP_TUNELOG"):
        names = TunedKernels.names
        print(f"kernels configured by timing at their first launch: {len(names)}")
        for name in names:  # "per" (persistent) and "red" (looped) reductions order sums
            print(f"  {name}")
