"""Atomic checkpoint files: a stage killed at any moment leaves either the previous
checkpoint or the new one, never half of one; a checkpoint of other runs is ignored."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import torch


@functools.cache
def code_version() -> str:
    """Hash of the engine, model and task source: a checkpoint (or a saved compiled step)
    never outlives a code change. Read once per process: every saved-step key asks for it."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha1()
    for sub in ("train", "models", "tasks"):
        for f in sorted((root / sub).glob("*.py")):
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def fingerprint(items) -> str:
    return hashlib.sha1(json.dumps(items, sort_keys=True).encode()).hexdigest()[:20]


def save(path: str | Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load(path: str | Path, expected_fingerprint: str):
    """The checkpoint at `path` if it exists and belongs to these runs, else None."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # a checkpoint from an incompatible version is not worth a crash
        return None
    if obj.get("fingerprint") != expected_fingerprint:
        return None
    return obj
