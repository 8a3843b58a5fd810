"""From `params.yaml` to a validated list of runs.

An experiment block names a task and a model family, overrides the task's defaults, and
declares a `grid`: dotted run keys mapped to lists of values; its runs are the cartesian product
(a list of grids gives their union). A `quick:` sub-block holds the overrides that the quick
preset (`preset: quick`) applies, so each experiment keeps its full and its CPU-sized settings
side by side and DVC sees both as params of that experiment's stages.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from grokpipe.config.schema import ConfigError, check, deep_merge, from_dict, set_dotted, to_dict
from grokpipe.models import MODELS
from grokpipe.tasks import TASKS

PRESETS = ("full", "quick")


@dataclass(frozen=True)
class LayerSchedule:
    """How one layer group trains: every `period`-th step only, or never (`frozen`)."""

    period: int = 1
    frozen: bool = False

    def validate(self, key: str) -> None:
        check(self.period >= 1, f"{key}.period", f"must be a positive integer, got {self.period}")


@dataclass(frozen=True)
class GrokfastConfig:
    """Grokfast-EMA gradient filter: ema = α·ema + (1−α)·g; g ← g + λ·ema."""

    alpha: float = 0.98
    lamb: float = 2.0

    def validate(self, key: str) -> None:
        check(0 <= self.alpha < 1, f"{key}.alpha", "must lie in [0, 1)")
        check(self.lamb >= 0, f"{key}.lamb", "must be non-negative")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 100_000
    batch_size: int | Literal["full"] = 512
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    momentum: float = 0.0
    warmup_steps: int = 10
    loss: Literal["cross_entropy", "mse", "hinge"] = "cross_entropy"
    loss_on: Literal["answer", "sequence"] = "answer"
    early_stop: float | None = None
    grokfast: GrokfastConfig | None = None
    layers: dict[str, LayerSchedule] = field(default_factory=dict)
    precision: Literal["fp32", "tf32", "bf16"] = "tf32"
    checkpoint_every: int = 5000
    # "scratch", or "<experiment>:<condition>": start from the final weights of that
    # experiment's run with this run's seed (only where a stage declares that dependency)
    init_from: str = "scratch"

    def validate(self, key: str) -> None:
        check(self.steps >= 1, f"{key}.steps", f"must be a positive integer, got {self.steps}")
        if self.batch_size != "full":
            check(self.batch_size >= 1, f"{key}.batch_size", "must be positive or 'full'")
        check(self.lr > 0, f"{key}.lr", f"must be positive, got {self.lr}")
        check(self.weight_decay >= 0, f"{key}.weight_decay", "must be non-negative")
        check(all(0 <= b < 1 for b in self.betas), f"{key}.betas", "each must lie in [0, 1)")
        check(self.eps > 0, f"{key}.eps", "must be positive")
        check(0 <= self.momentum < 1, f"{key}.momentum", "must lie in [0, 1)")
        check(self.warmup_steps >= 0, f"{key}.warmup_steps", "must be non-negative")
        if self.early_stop is not None:
            check(0 < self.early_stop <= 1, f"{key}.early_stop", "must lie in (0, 1] or be null")
        check(self.checkpoint_every >= 1, f"{key}.checkpoint_every", "must be positive")
        if self.init_from != "scratch":
            source, _, condition = self.init_from.partition(":")
            check(
                bool(source and condition),
                f"{key}.init_from",
                f"expected 'scratch' or '<experiment>:<condition>', got {self.init_from!r}",
            )


@dataclass(frozen=True)
class EvalConfig:
    """Evaluate every `every` steps, plus `log_points` log-spaced steps for the early phase."""

    every: int = 100
    log_points: int = 40

    def validate(self, key: str) -> None:
        check(self.every >= 1, f"{key}.every", "must be a positive integer")
        check(self.log_points >= 0, f"{key}.log_points", "must be non-negative")

    def steps(self, total: int) -> list[int]:
        import numpy as np

        points = set(range(0, total + 1, self.every)) | {0, total}
        if self.log_points:
            points |= {int(s) for s in np.geomspace(1, total, self.log_points)}
        return sorted(p for p in points if 0 <= p <= total)


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one run's result."""

    task: str
    seed: int
    data: Any
    model_name: str
    model: Any
    train: TrainConfig
    eval: EvalConfig

    def as_dict(self) -> dict:
        return {
            "task": self.task,
            "seed": self.seed,
            "data": to_dict(self.data),
            "model": {"family": self.model_name, **to_dict(self.model)},
            "train": to_dict(self.train),
            "eval": to_dict(self.eval),
        }

    def fingerprint(self) -> str:
        blob = json.dumps(self.as_dict(), sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:16]


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    labels: dict[str, Any]  # grid axis (short name) -> value, for tables and figures
    config: RunConfig


@dataclass(frozen=True)
class ExperimentOptions:
    """Experiment-level settings that shape outputs, not runs."""

    save_weights: bool = False  # keep every run's final weights (e.g. for a transfer stage)


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    task: str
    axes: list[str]  # short names of grid axes, in order; `seed` included when gridded
    runs: list[RunSpec]
    figures: list[str]
    analyses: list[str]  # experiment-specific analyses (grokpipe.analysis.ANALYSES)
    options: ExperimentOptions
    # the effective block under the active preset (task defaults, the block, its `quick:`):
    # every setting the experiment's stages read, as params.yaml spells it
    settings: dict = field(default_factory=dict, compare=False)

    @property
    def condition_axes(self) -> list[str]:
        """Axes that define a condition: every grid axis except the seed."""
        return [a for a in self.axes if a != "seed"]


EXPERIMENT_KEYS = {"title", "task", "grid", "figures", "analyses", "options", "quick", "seed"}
RUN_SECTIONS = {"data", "model", "train", "eval"}


def resolve_block(params: dict, name: str, section: str = "experiments") -> dict:
    """The experiment's effective block: the task's defaults (under the quick preset with
    their `quick:` block applied), then the experiment (likewise). A setting of the
    experiment's own therefore wins over the defaults' quick settings: a user who sets
    `experiments.seq2seq.train.lr` gets that rate under both presets, and only the
    experiment's own `quick:` block changes it for the quick preset.

    `section` is the top-level key holding the block: `experiments`, or a stage of its own
    (e.g. `transfer`, whose block is one experiment)."""
    preset = params.get("preset", "full")
    check(preset in PRESETS, "preset", f"expected one of {PRESETS}, got {preset!r}")
    if section == "experiments":
        experiments = params.get("experiments") or {}
        check(name in experiments, f"experiments.{name}", "no such experiment")
        block, key = experiments[name], f"experiments.{name}"
    else:
        block, key = params.get(section), section
        check(block is not None, key, "missing block")
    check(isinstance(block, dict), key, "expected a mapping")
    task = block.get("task")
    check(
        isinstance(task, str) and task in TASKS,
        f"{key}.task",
        f"expected one of {sorted(TASKS)}, got {task!r}",
    )
    defaults = (params.get("defaults") or {}).get(task) or {}

    def effective(b: dict) -> dict:
        own = _without_quick(b)
        return deep_merge(own, b.get("quick") or {}) if preset == "quick" else own

    base, own = effective(defaults), effective(block)
    merged = deep_merge(base, own)
    # A block that names another model family than its task's defaults (seed 004's MLP on
    # the binary operations) takes none of the defaults' model keys: they configure another
    # model, whose keys the family would reject as unknown.
    base_model, own_model = base.get("model"), own.get("model")
    if isinstance(base_model, dict) and isinstance(own_model, dict):
        family = own_model.get("family", base_model.get("family"))
        if family != base_model.get("family"):
            merged["model"] = own_model
    return merged


def _without_quick(block: dict) -> dict:
    return {k: v for k, v in block.items() if k != "quick"}


def _grids(raw: Any, key: str) -> list[dict[str, list]]:
    if raw is None:
        return [{}]
    grids = raw if isinstance(raw, list) else [raw]
    for i, g in enumerate(grids):
        gkey = f"{key}[{i}]" if isinstance(raw, list) else key
        check(isinstance(g, dict), gkey, "expected a mapping of dotted keys to lists of values")
        for axis, values in g.items():
            check(
                isinstance(values, list) and len(values) > 0,
                f"{gkey}.{axis}",
                "expected a non-empty list of values",
            )
            head = axis.split(".")[0]
            check(
                head in RUN_SECTIONS or axis == "seed",
                f"{gkey}.{axis}",
                f"grid axes are 'seed' or dotted keys under {sorted(RUN_SECTIONS)}",
            )
    return grids


def short_names(axes: list[str]) -> dict[str, str]:
    """Last component of each dotted axis, or the full path where the last one collides."""
    last = [a.split(".")[-1] for a in axes]
    return {a: (s if last.count(s) == 1 else a) for a, s in zip(axes, last)}


def build_run_config(block: dict, key: str) -> RunConfig:
    """Validate one run's merged settings; errors name `key`-relative dotted params."""
    unknown = sorted(set(block) - RUN_SECTIONS - EXPERIMENT_KEYS)
    check(
        not unknown,
        f"{key}.{unknown[0]}" if unknown else key,
        "unknown key (expected one of: " + ", ".join(sorted(RUN_SECTIONS | EXPERIMENT_KEYS)) + ")",
    )
    task = TASKS[block["task"]]
    seed = block.get("seed", 0)
    check(
        isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0,
        f"{key}.seed",
        f"must be a non-negative integer, got {seed!r}",
    )
    data = from_dict(task.Config, block.get("data"), f"{key}.data")
    model_block = dict(block.get("model") or {})
    family = model_block.pop("family", None)
    check(
        isinstance(family, str) and family in MODELS,
        f"{key}.model.family",
        f"expected one of {sorted(MODELS)}, got {family!r}",
    )
    model = from_dict(MODELS[family].Config, model_block, f"{key}.model")
    train = from_dict(TrainConfig, block.get("train"), f"{key}.train")
    if train.loss_on == "sequence":
        check(
            MODELS[family].sequence_model,
            f"{key}.train.loss_on",
            f"model family {family!r} predicts one answer; 'sequence' needs a transformer",
        )
        check(
            getattr(data, "has_sequence_targets", True),
            f"{key}.train.loss_on",
            "this data encoding has no next-token targets (only the answer); use 'answer'",
        )
    evaluation = from_dict(EvalConfig, block.get("eval"), f"{key}.eval")
    return RunConfig(block["task"], seed, data, family, model, train, evaluation)


_MISSING = object()


def _at_path(tree, dotted: str):
    """tree[a][b][c] for `a.b.c`, or _MISSING where a mapping lacks a part."""
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


def where_set(params: dict, key: str, dotted: str) -> str:
    """The params.yaml key that sets `dotted` (a key of the merged block, e.g. `train.lr`)
    for the block at `key` (`experiments.<name>`, or a section such as `transfer`), the one
    of highest precedence (`resolve_block`): its quick block (under the quick preset), the
    block itself, the defaults' quick block, the defaults. `dotted` under `key` where none
    sets it (a grid value, a missing key)."""
    block = _at_path(params, key)
    task = block.get("task") if isinstance(block, dict) else None
    defaults = (params.get("defaults") or {}).get(task) if isinstance(task, str) else None
    quick = params.get("preset", "full") == "quick"
    places = [f"{key}.quick"] if quick else []
    places.append(key)
    if isinstance(defaults, dict):
        places += [f"defaults.{task}.quick"] if quick else []
        places.append(f"defaults.{task}")
    for prefix in places:
        if _at_path(params, f"{prefix}.{dotted}") is not _MISSING:
            return f"{prefix}.{dotted}"
    return f"{key}.{dotted}"


def load_experiment(params: dict, name: str, section: str = "experiments") -> Experiment:
    """Resolve presets and defaults, expand the grid and validate every run. A bad value
    is reported under the key that sets it (`where_set`), in the experiment, its quick
    block or the task's defaults."""
    key = f"experiments.{name}" if section == "experiments" else section
    try:
        return _load_experiment(params, name, section, key)
    except ConfigError as err:
        if not err.key.startswith(f"{key}."):
            raise
        origin = where_set(params, key, err.key[len(key) + 1 :])
        raise ConfigError(origin, err.reason) from None


def _load_experiment(params: dict, name: str, section: str, key: str) -> Experiment:
    block = resolve_block(params, name, section)
    grids = _grids(block.get("grid"), f"{key}.grid")
    axes: list[str] = []
    for g in grids:
        axes += [a for a in g if a not in axes]
    names = short_names(axes)
    runs: list[RunSpec] = []
    seen: dict[str, str] = {}
    base = {
        k: v
        for k, v in block.items()
        if k not in ("grid", "figures", "analyses", "options", "title")
    }
    for g in grids:
        for combo in itertools.product(*g.values()):
            settings = dict(zip(g.keys(), combo))
            run_block = base
            for axis, value in settings.items():
                run_block = set_dotted(run_block, axis, value)
            labels = {names[a]: settings.get(a) for a in axes}
            try:
                cfg = build_run_config(run_block, key)
            except ConfigError as err:
                where = ", ".join(f"{a}={v}" for a, v in settings.items())
                raise ConfigError(
                    err.key, f"{err.reason} (in the run {where})" if where else err.reason
                ) from None
            fp = cfg.fingerprint()
            check(fp not in seen, f"{key}.grid", f"two grid points give the same run ({labels})")
            seen[fp] = fp
            runs.append(RunSpec(f"r{len(runs):04d}", labels, cfg))
    figures = block.get("figures") or ["curves", "grok_steps"]
    check(isinstance(figures, list), f"{key}.figures", "expected a list of figure kinds")
    options = from_dict(ExperimentOptions, block.get("options"), f"{key}.options")
    analyses = block.get("analyses") or []
    check(isinstance(analyses, list), f"{key}.analyses", "expected a list of analysis kinds")
    title = block.get("title") or name
    return Experiment(
        name,
        str(title),
        block["task"],
        [names[a] for a in axes],
        runs,
        figures,
        analyses,
        options,
        settings=block,
    )


def load_params(path: str = "params.yaml") -> dict:
    import yaml

    with open(path) as fh:
        params = yaml.safe_load(fh) or {}
    check(isinstance(params, dict), path, "expected a mapping at the top level")
    return params
