"""Figure registry: kind -> "module:function"; the function takes a FigureContext and returns
the paths it wrote.

Entries are names, resolved on use, so that validating params (which checks figure kinds)
does not pay for importing matplotlib and seaborn. An experiment lists the kinds it wants under
`figures:` in params.yaml.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

FIGURES: dict[str, str] = {
    "curves": "grokpipe.figures.binary_ops:curves",
    "grok_steps": "grokpipe.figures.binary_ops:grok_steps",
    "fraction_sweep": "grokpipe.figures.binary_ops:fraction_sweep",
    "value_counts": "grokpipe.figures.binary_ops:value_counts",
    "post_grok_drops": "grokpipe.figures.binary_ops:post_grok_drops",
    "med_curves": "grokpipe.figures.med:med_curves",
    "parity_curves": "grokpipe.figures.parity:parity_curves",
    "parity_rate_limiting": "grokpipe.figures.parity:parity_rate_limiting",
    "parity_data_size": "grokpipe.figures.parity:parity_data_size",
    "parity_init_scale": "grokpipe.figures.parity:parity_init_scale",
    "parity_frozen": "grokpipe.figures.parity:parity_frozen",
    "parity_double_grokking": "grokpipe.figures.parity:parity_double_grokking",
}


def figure(kind: str) -> Callable:
    module, _, fn = FIGURES[kind].partition(":")
    return getattr(importlib.import_module(module), fn)
