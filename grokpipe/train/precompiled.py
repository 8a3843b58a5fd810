"""Compiled step functions saved to disk, so that a later process loads them instead of tracing.

Every DVC train stage is a new process. Inductor's on-disk cache spares it the kernel
compilation, but not dynamo's and AOTAutograd's tracing of the step, which is most of a warm
compile (20-28 s a stage on the GPU host, fourteen train stages). torch's AOT precompile
(`torch.compile(fn).aot_compile(...)`, experimental in torch 2.11-2.13) saves the traced and
compiled function itself. On an H100 a later process had its step loaded and captured as a
CUDA graph in 5.0 s, against 20.8 s to trace it (BENCHMARKS.md, eighth session). Where torch
lacks the API (`available()`), the engine traces in each process as before.

What keeps a loaded function honest:
- it keeps dynamo's guards on tensor dtypes, ranks, strides and the symbolic relations between
  sizes, and on the Python constants traced into it (batch size, loss, betas, flags); the
  engine checks them against the ensemble before it first uses the function, and a function
  whose guards fail is never called: the engine traces afresh and saves another entry (an
  ensemble of one run, whose sizes of 1 are specialised, gets its own);
- guards that cannot be saved (closures, function defaults, module and type identity) are
  dropped; what they protected is in the entry's key: the engine's compile key (model,
  settings, static sizes), grokpipe's engine/model/task source, torch's version, the device
  and the matmul precision.

Entries live in `<inductor cache dir>/grokpipe_precompiled/` (`TORCHINDUCTOR_CACHE_DIR` moves
both), beside the kernels they were built from; those unused for `MAX_AGE_DAYS` are deleted
when a new one is saved.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import torch

from grokpipe.train.checkpoint import code_version

log = logging.getLogger(__name__)

# guard types a saved function keeps; the rest cannot be serialised or only re-check identity
_KEPT_GUARDS = ("TENSOR_MATCH", "SHAPE_ENV")
_KEPT_CONSTANTS = ("CONSTANT_MATCH", "EQUALS_MATCH")

# entries not used for this long are deleted when a new one is saved: a code change or a torch
# upgrade changes every key, so older entries would otherwise pile up unused
MAX_AGE_DAYS = 30

# functions loaded (or compiled) in this process, by entry key: a later ensemble of the same
# key (the next job, a compacted ensemble) checks their guards instead of reading files again
_loaded: dict[str, list] = {}


def available() -> bool:
    """Whether this torch can save compiled functions (the API is experimental)."""
    try:
        from torch._dynamo.aot_compile import AOTCompiledFunction  # noqa: F401
    except ImportError:
        return False
    return hasattr(torch.compiler, "load_compiled_function")


def store_dir() -> Path:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir()) / "grokpipe_precompiled"


# Constants read through a closure (functorch's grad transform) cannot be rebuilt on load, and
# torch 2.11 cannot unpickle the source of a function's default argument; both are fixed by
# the code, which the entry key holds.
_UNSAVED_SOURCES = ("__closure__", "__defaults__", "__kwdefaults__")


def _keep_guard(entry) -> bool:
    if entry.guard_type in _KEPT_GUARDS:
        return True
    return entry.guard_type in _KEPT_CONSTANTS and not any(
        s in entry.name for s in _UNSAVED_SOURCES
    )


def _keep_guards(entries) -> list[bool]:
    return [_keep_guard(e) for e in entries]


def entry_key(name: str, compile_key: str, backend: str, device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        where = f"{props.name} sm{props.major}{props.minor}"
    else:
        where = "cpu"
    parts = (
        name,
        compile_key,
        backend,
        where,
        torch.__version__,
        f"python{sys.version_info[0]}.{sys.version_info[1]}",
        torch.get_float32_matmul_precision(),
        code_version(),
    )
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


@contextlib.contextmanager
def kernels_in_process():
    """Keep inductor's pool of compile workers from starting while a saved step is loaded and
    first run.

    Loading a saved step fetches each of its ~300 kernels through inductor's async compiler,
    whose first request starts a pool of one worker process per core. The kernels are cached,
    so the main process has them before the pool is up; but the pool still starts, and the
    process waits for it at exit. That is the likely cause of what the ninth session's H100
    run showed: short train stages that loaded their step spent 9-13 s after training before
    DVC went on, against 3-5 s for stages whose pool had been used for a trace (to confirm on
    the next GPU run). A trace needs the pool, so it runs outside this."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(compile_threads=1):
        yield


def saved_on_disk(key: str) -> bool:
    """Whether some process saved a function under `key` (whether its guards hold for a given
    ensemble is only known by loading it)."""
    return any((store_dir() / key).glob("*.bin"))


def _load(path: Path, f_globals: dict):
    from torch._guards import TracingContext, tracing

    # torch 2.13 rebuilds import sources while unpickling guards, which needs a tracing context
    with open(path, "rb") as f, tracing(TracingContext(None)), kernels_in_process():
        return torch.compiler.load_compiled_function(f, f_globals=f_globals)


def _candidates(key: str, f_globals: dict) -> list:
    """Functions of this key: those already in memory, then any new files on disk."""
    known = _loaded.setdefault(key, [])
    seen = {getattr(fn, "_grokpipe_path", None) for fn in known}
    folder = store_dir() / key
    if folder.is_dir():
        for path in sorted(folder.glob("*.bin")):
            if str(path) in seen:
                continue
            try:
                fn = _load(path, f_globals)
            except Exception as exc:  # an entry of another torch build, or a torn file
                log.warning("precompiled step %s is unusable (%s); tracing instead", path, exc)
                continue
            fn._grokpipe_path = str(path)
            known.append(fn)
    return known


def compiled_method(
    method: Callable,
    args: tuple,
    key: str,
    backend: str,
    mark_dynamic: Callable[[], None],
    inductor_options: dict | None = None,
) -> tuple[Callable, str]:
    """`method` (bound to its ensemble) compiled: a saved function whose guards hold for this
    ensemble and `args`, or a fresh compile that is saved for the next process.

    `inductor_options` are inductor settings compiled in with the function (the caller's
    entry key must tell apart functions compiled under different ones).

    Returns (callable taking `args`, how it was obtained: "memory", "disk" or "traced")."""
    owner = method.__self__
    f_globals = method.__func__.__globals__
    in_memory = len(_loaded.get(key, []))
    for i, fn in enumerate(_candidates(key, f_globals)):
        try:
            ok = fn.guard_check(owner, *args)
        except Exception as exc:  # a guard that cannot be evaluated on this ensemble
            log.warning("precompiled step guard check failed to run (%s)", exc)
            ok = False
        if ok:
            fn.disable_guard_check()  # checked just now, for this ensemble's tensors
            _touch(getattr(fn, "_grokpipe_path", None))
            return _bound(fn, owner), ("memory" if i < in_memory else "disk")
    mark_dynamic()
    torch._dynamo.config.enable_aot_compile = True  # off by default in torch 2.11
    compiled = torch.compile(
        method,
        backend=backend,
        dynamic=False,
        fullgraph=True,  # a graph break would run eagerly and host-synchronise, silently
        options={"guard_filter_fn": _keep_guards, **(inductor_options or {})},
    )
    fn = compiled.aot_compile((args, {}))
    folder = store_dir() / key
    path = folder / f"{uuid.uuid4().hex}.bin"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fn.save_compiled_function(str(path))  # written atomically
        fn._grokpipe_path = str(path)
    except Exception as exc:  # a read-only or full disk costs the next stage a trace, no more
        log.warning("could not save the compiled step to %s (%s)", path, exc)
    else:
        prune(MAX_AGE_DAYS)
    _loaded.setdefault(key, []).append(fn)
    return _bound(fn, owner), "traced"


def _touch(path: str | None) -> None:
    """Mark an entry as used (its age is what `prune` reads)."""
    if path is not None:
        # deleted by a concurrent prune, or a read-only store: harmless
        with contextlib.suppress(OSError):
            os.utime(path)


def prune(max_age_days: float) -> list[Path]:
    """Delete entries not saved or used for `max_age_days`; returns what was deleted."""
    cutoff = time.time() - max_age_days * 86400
    gone = []
    for path in store_dir().glob("*/*.bin"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                gone.append(path)
        except OSError:  # another process pruned it first
            continue
    return gone  # (empty key folders stay: removing one could race with a save into it)


def _bound(fn, owner) -> Callable:
    """The saved function takes the ensemble as its first argument, as the method did."""

    def call(*args):
        return fn(owner, *args)

    return call


def clear_memory() -> None:
    """Forget the functions loaded in this process (tests)."""
    _loaded.clear()
