"""Schema of the `toy_model` block of params.yaml, validated with `from_dict`.

    toy_model:
      epochs: 300
      double_descent: {patterns: [{name, gamma, alpha, b, g, preferred}, ...]}
      grokking:       {patterns: [...]}
      slider:  {heuristic_gamma: [...], slow_gamma: [...]}   # the seed's slider as a grid
      fit:     {...}                                         # fits to measured runs

The slider varies γ of the patterns named `heuristic` and `slow` in the double-descent setting
(the seed's interactive widget moves exactly those two), so both names must exist there.
Every error names the dotted key, so a typo fails before any stage writes an output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from grokpipe.analysis.toymodel import Pattern
from grokpipe.config.schema import ConfigError, check, from_dict

SLIDER_PATTERNS = ("heuristic", "slow")


@dataclass(frozen=True)
class Setting:
    """One regime of the toy model: its list of patterns."""

    patterns: list[Pattern]

    def validate(self, key: str) -> None:
        check(len(self.patterns) >= 1, f"{key}.patterns", "needs at least one pattern")
        names = [p.name for p in self.patterns if p.name]
        check(len(names) == len(set(names)), f"{key}.patterns", "pattern names must be unique")

    def index(self, name: str) -> int:
        return next(i for i, p in enumerate(self.patterns) if p.name == name)


def _unit_list(values: list[float], key: str) -> None:
    check(len(values) >= 1, key, "needs at least one value")
    for i, v in enumerate(values):
        check(0 <= v <= 1, f"{key}[{i}]", f"must lie in [0, 1], got {v}")


@dataclass(frozen=True)
class SliderGrid:
    """Rows: γ of the `heuristic` pattern; columns: γ of the `slow` (preferred) pattern."""

    heuristic_gamma: list[float] = field(default_factory=lambda: [0.7, 0.5, 0.3, 0.1, 0.0])
    slow_gamma: list[float] = field(default_factory=lambda: [0.2, 0.4, 0.6, 0.8, 1.0])

    def validate(self, key: str) -> None:
        _unit_list(self.heuristic_gamma, f"{key}.heuristic_gamma")
        _unit_list(self.slow_gamma, f"{key}.slow_gamma")


@dataclass(frozen=True)
class FitConfig:
    """How `stages.toyfit` fits the toy model to measured train/validation curves."""

    # add the heuristic pattern only when it lowers BIC by at least this much
    heuristic_min_bic_gain: float = 10.0
    # random restarts per model on top of the data-driven starting points
    restarts: int = 8
    # soft-L1 scale: residuals beyond it (loss spikes) count linearly, not quadratically
    robust_scale: float = 0.05
    # runs drawn in fits.png (a spread over conditions when there are more)
    max_runs_in_figure: int = 12
    seed: int = 0

    def validate(self, key: str) -> None:
        check(self.restarts >= 0, f"{key}.restarts", "must be non-negative")
        check(self.robust_scale > 0, f"{key}.robust_scale", "must be positive")
        check(self.max_runs_in_figure >= 1, f"{key}.max_runs_in_figure", "must be positive")


@dataclass(frozen=True)
class ToyModelParams:
    double_descent: Setting
    grokking: Setting
    epochs: int = 300
    slider: SliderGrid = field(default_factory=SliderGrid)
    fit: FitConfig = field(default_factory=FitConfig)

    def validate(self, key: str) -> None:
        check(self.epochs >= 2, f"{key}.epochs", f"must be at least 2, got {self.epochs}")
        names = {p.name for p in self.double_descent.patterns}
        for name in SLIDER_PATTERNS:
            if name not in names:
                raise ConfigError(
                    f"{key}.double_descent.patterns",
                    f"the slider needs a pattern named {name!r}",
                )


def toy_model_params(params: dict) -> ToyModelParams:
    """The validated `toy_model` block (ConfigError names the bad key)."""
    return from_dict(ToyModelParams, params.get("toy_model"), "toy_model")


def fit_config(params: dict) -> FitConfig:
    """Only `toy_model.fit` (defaults when absent), so the fit stage need not parse the rest."""
    block = params.get("toy_model") or {}
    if not isinstance(block, dict):
        raise ConfigError("toy_model", f"expected a mapping, got {block!r}")
    return from_dict(FitConfig, block.get("fit"), "toy_model.fit")
