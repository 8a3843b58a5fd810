"""Analyses that turn result tables into numbers.

`ANALYSES` is the registry of experiment-specific analyses: kind -> function(experiment,
table, history) -> JSON-able dict with at least a one-line "verdict". An experiment lists the
kinds it wants under `analyses:` in params.yaml; the evaluate stage writes each result under
`analyses.<kind>` of the experiment's metrics file, and figures may quote the verdict.
`table` is `grokking.per_run(...)`: runs.tsv joined with memorized_at, grokked_at, delay, ...;
`history` is the runs' learning curves (runstore's history.tsv).
"""

from __future__ import annotations

from collections.abc import Callable

ANALYSES: dict[str, Callable] = {}


def register(kind: str):
    def deco(fn):
        if kind in ANALYSES:
            raise ValueError(f"analysis {kind!r} registered twice")
        ANALYSES[kind] = fn
        return fn

    return deco


def _register_all() -> None:
    """Import the modules whose analyses register themselves (at the bottom: they import
    `register` from this module)."""
    from grokpipe.analysis import parity  # noqa: F401


_register_all()
