"""Probe: which of a step's graph compiles see inductor's deterministic mode, on each path?

The twenty-second session found that the pipeline's saved steps compile without inductor's
deterministic mode, although the engine then set `torch._inductor.config.deterministic`
before it compiled (BENCHMARKS.md; since the twenty-fourth session it no longer does): once
dynamo has traced a frame it restores `torch.use_deterministic_algorithms` to its previous
state, and that call writes inductor's setting too (False, as the engine leaves torch's
deterministic algorithms off). A graph compiled after that point (the saved step, compiled
after its trace; the second function a process compiles; a backward compiled at its first
call) runs without the mode, and its reduction kernels are configured by timing at their
first launch.

This compiles a LayerNorm forward and a step that takes its gradient inside the graph (as the
engine's step does), with the mode set beforehand, by each path, and prints the value of the
setting at each graph compile:

  plain    torch.compile(f): the first graph sees the mode, the later ones do not
  options  torch.compile(f, options={"deterministic": True}): every graph sees it
  aot      the step through `.aot_compile(...)`, as `grokpipe.train.precompiled` saves one
  aot_options  the same with the option

Usage (CPU or GPU): `python scripts/inductor_mode_probe.py plain options aot aot_options`,
each path in its own process (the mode is process-wide). Not a test.
"""

import os
import subprocess
import sys
import tempfile

PATHS = ("plain", "options", "aot", "aot_options")


def probe(path: str) -> None:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp()  # a fresh compile, nothing cached
    import torch
    import torch._inductor.config as inductor_config
    import torch._inductor.graph as inductor_graph

    from grokpipe.train.gradients import allow_compiled_gradients
    from grokpipe.train.precompiled import _keep_guards

    seen = []
    compile_to_module = inductor_graph.GraphLowering.compile_to_module

    def recording(self, *args, **kwargs):
        seen.append(inductor_config.deterministic)
        return compile_to_module(self, *args, **kwargs)

    inductor_graph.GraphLowering.compile_to_module = recording
    allow_compiled_gradients()
    inductor_config.deterministic = True
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(64, 128, device=device)
    w = torch.randn(128, device=device, requires_grad=True)
    options = {"deterministic": True} if path.endswith("options") else {}
    if path.startswith("aot"):
        torch._dynamo.config.enable_aot_compile = True
        step = torch.compile(
            gradient_step, fullgraph=True, options={"guard_filter_fn": _keep_guards, **options}
        )
        step.aot_compile(((x, w), {}))(x, w)
    else:
        torch.compile(layer_norm_sum, fullgraph=True, options=options or None)(x, w).backward()
        torch.compile(gradient_step, fullgraph=True, options=options or None)(x, w)
    print(
        f"{path:12} on {device}: graph compiles saw deterministic = {seen}; the setting is "
        f"{inductor_config.deterministic} afterwards (torch {torch.__version__})",
        flush=True,
    )


def layer_norm_sum(x, w):
    import torch

    return (torch.nn.functional.layer_norm(x, x.shape[-1:]) * w).sum()


def gradient_step(x, w):
    import torch

    loss = layer_norm_sum(x, w)
    (grad,) = torch.autograd.grad(loss, [w])
    return loss.detach(), grad


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        probe(sys.argv[2])
    else:
        for path in sys.argv[1:] or PATHS:
            if path not in PATHS:
                raise SystemExit(f"unknown path {path!r}: one of {', '.join(PATHS)}")
            subprocess.run([sys.executable, __file__, "--one", path], check=False)
