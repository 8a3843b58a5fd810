"""Figure registry: kind -> function(FigureContext) -> list of written paths.

An experiment lists the kinds it wants under `figures:` in params.yaml.
"""

from __future__ import annotations

from collections.abc import Callable

FIGURES: dict[str, Callable] = {}


def _register_all() -> None:
    from grokpipe.figures import binary_ops

    FIGURES.update(
        {
            "curves": binary_ops.curves,
            "grok_steps": binary_ops.grok_steps,
            "fraction_sweep": binary_ops.fraction_sweep,
            "value_counts": binary_ops.value_counts,
        }
    )


_register_all()
