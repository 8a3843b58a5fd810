"""Writing stage outputs so that a failure leaves nothing half-written.

Outputs are built in a sibling temporary path and moved into place in one rename; a stage that
dies midway leaves the previous output (or none), never a mixture.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from grokpipe.config.schema import ConfigError


class StageError(Exception):
    """A stage cannot go on for a reason outside params.yaml (`stage_main` prints it in one
    line and exits 1)."""


# the temporary sibling of an output being written; one left behind by a killed process is
# not an output (the next write of that output removes it first)
PARTIAL_SUFFIX = ".partial"


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces `path` when the block succeeds."""
    path = Path(path)
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        # moved aside in one rename, then deleted: a kill during the delete leaves the new
        # output whole beside a leftover `.old.partial`, never a half-deleted old one at `path`
        old = path.with_name(path.name + ".old" + PARTIAL_SUFFIX)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
        return
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        with open(tmp, mode) as fh:
            yield fh
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_json(path: str | Path, obj) -> None:
    with atomic_file(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, default=_json_default)
        fh.write("\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return None if np.isnan(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


@contextlib.contextmanager
def exclusive(path: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` for the block, or fail at once if another process holds
    it: two processes training one experiment would each resume from and overwrite the other's
    checkpoints. The lock is the kernel's (flock), so a killed holder never leaves it stale."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise StageError(f"{what} is already running ({holder}; lock {path})") from None
        fh.truncate(0)  # "a+" writes at the end, now the start
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        try:
            yield
        finally:
            fh.truncate(0)
            fcntl.flock(fh, fcntl.LOCK_UN)


def stage_main(fn: Callable[..., None]) -> Callable[..., None]:
    """Run a stage entry point; a bad param exits 2 with one line naming the key and reason,
    a `StageError` exits 1 with its one line."""

    def wrapper(*args, **kwargs):
        try:
            fn(*args, **kwargs)
        except ConfigError as err:
            print(f"error: params.yaml: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except StageError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(1) from None

    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = fn.__name__
    return wrapper
