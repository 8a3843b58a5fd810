"""Per-layer training schedules, for any model family: freeze a layer, or let it update only
on steps divisible by its period (seed 003's rate-limiting test of layer coordination).

Layers are addressed by the names a model's `layer_groups()` gives, or by `first` / `last`
(the groups nearest the input and the output).
"""

from __future__ import annotations

from grokpipe.config.schema import ConfigError


def resolve_layer_periods(model, layers: dict, key: str = "train.layers") -> dict[str, int]:
    """Parameter name -> update period (0 = frozen) from a `train.layers` mapping."""
    periods = {name: 1 for name, _ in model.named_parameters()}
    groups = dict(model.layer_groups())
    aliases = {"first": model.layer_groups()[0][0], "last": model.layer_groups()[-1][0]}
    for layer, sched in layers.items():
        target = aliases.get(layer, layer)
        if target not in groups:
            raise ConfigError(
                f"{key}.{layer}",
                f"no such layer group (this model has: first, last, {', '.join(groups)})",
            )
        for pname in groups[target]:
            periods[pname] = 0 if sched.frozen else sched.period
    return periods
