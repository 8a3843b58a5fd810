"""params.yaml validation: every bad value fails with the full dotted key and the reason."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from grokpipe.config.experiment import load_experiment, resolve_block, short_names
from grokpipe.config.schema import ConfigError
from grokpipe.config.validate import check_experiment
from grokpipe.runstore import condition_label

REPO = Path(__file__).resolve().parents[1]

TINY_MODEL = {"family": "transformer", "n_layers": 1, "d_model": 16, "n_heads": 2, "d_ff": 32}


def make_params(**experiment) -> dict:
    """A minimal valid params tree with one arithmetic experiment `e` (keys override)."""
    block = {"task": "arithmetic", "model": dict(TINY_MODEL), **experiment}
    return {
        "preset": "full",
        "defaults": {
            "arithmetic": {
                "seed": 0,
                "data": {"op": "x+y", "p": 7, "split": "random", "train_fraction": 0.5},
                "train": {"steps": 10, "batch_size": 8},
                "eval": {"every": 5, "log_points": 0},
            }
        },
        "experiments": {"e": block},
    }


def with_value(params: dict, dotted: str, value) -> dict:
    """Deep copy of `params` with the dotted path set (intermediate mappings created)."""
    out = copy.deepcopy(params)
    node = out
    *head, last = dotted.split(".")
    for part in head:
        node = node.setdefault(part, {})
    node[last] = value
    return out


def config_error(params: dict, name: str = "e") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        check_experiment(params, name)
    return info.value


def assert_names(err: ConfigError, key: str, *reason_parts: str) -> None:
    msg = str(err)
    assert err.key == key, msg
    assert msg.startswith(f"{key}: "), msg
    assert "\n" not in msg
    for part in reason_parts:
        assert part in err.reason, msg


# --- a valid experiment --------------------------------------------------------------------


def test_minimal_params_are_valid():
    exp = check_experiment(make_params(), "e")
    assert exp.task == "arithmetic"
    assert len(exp.runs) == 1
    cfg = exp.runs[0].config
    assert cfg.data.op == "x+y" and cfg.data.p == 7
    assert cfg.model_name == "transformer" and cfg.model.d_model == 16
    assert cfg.train.steps == 10 and cfg.train.lr == pytest.approx(1e-3)
    assert exp.figures == ["curves", "grok_steps"]


def test_the_repository_params_are_valid():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name in params["experiments"]:
        exp = load_experiment(params, name)
        assert exp.runs, name


# --- bad values ----------------------------------------------------------------------------

BAD_VALUES = [
    # (dotted path under experiments.e, value, key reported, fragments of the reason)
    ("data.op", "x%y", "data.op", ["unknown operation", "'x%y'"]),
    ("data.split", "diagonal", "data.split", ["expected one of", "'diagonal'"]),
    ("train.lrr", 0.1, "train.lrr", ["unknown key"]),
    ("train.lr", "abc", "train.lr", ["expected a number", "'abc'"]),
    ("train.lr", 0.0, "train.lr", ["positive"]),
    ("train.steps", 1.5, "train.steps", ["expected an integer", "1.5"]),
    ("train.steps", "ten", "train.steps", ["expected an integer"]),
    ("train.steps", 0, "train.steps", ["positive"]),
    ("train.steps", -5, "train.steps", ["positive"]),
    ("train.batch_size", "half", "train.batch_size", ["expected"]),
    ("data.train_fraction", 0.0, "data.train_fraction", ["(0, 1)"]),
    ("data.train_fraction", 1.0, "data.train_fraction", ["(0, 1)"]),
    ("data.train_fraction", 1.5, "data.train_fraction", ["(0, 1)"]),
    ("data.train_fraction", -0.2, "data.train_fraction", ["(0, 1)"]),
    ("data.p", 1, "data.p", ["at least 2"]),
    ("data.k", 3, "data.k", ["takes no k"]),  # random split
    ("model.family", "cnn", "model.family", ["expected one of", "'cnn'"]),
    ("model.family", ["transformer"], "model.family", ["expected one of"]),
    ("task", ["arithmetic"], "task", ["expected one of"]),
    ("model.n_heads", 3, "model.n_heads", ["divide"]),
    ("model.depth", 3, "model.depth", ["unknown key"]),
    ("model.embed_std", 0.0, "model.embed_std", ["positive"]),
    ("eval.every", 0, "eval.every", ["positive"]),
    ("seed", -1, "seed", ["non-negative"]),
    ("trian", {"lr": 1}, "trian", ["unknown key"]),
]


@pytest.mark.parametrize(
    ("path", "value", "key", "reason"), BAD_VALUES, ids=[f"{b[0]}={b[1]!r}" for b in BAD_VALUES]
)
def test_bad_value_names_key_and_reason(path, value, key, reason):
    params = with_value(make_params(), f"experiments.e.{path}", value)
    assert_names(config_error(params), f"experiments.e.{key}", *reason)


def test_division_with_composite_modulus():
    params = make_params(data={"op": "x/y", "p": 9})
    assert_names(config_error(params), "experiments.e.data.p", "prime", "9")


@pytest.mark.parametrize("split", ["strip", "rect"])
def test_structured_split_needs_k(split):
    params = make_params(data={"split": split})
    assert_names(config_error(params), "experiments.e.data.k", "needs k")


@pytest.mark.parametrize("split", ["strip", "rect"])
@pytest.mark.parametrize("k", [-1, 6, 7, 100])
def test_structured_split_k_out_of_range(split, k):
    # x+y mod 7: operands 0..6; k must leave a non-empty region and a non-empty rest
    params = make_params(data={"split": split, "k": k})
    assert_names(config_error(params), "experiments.e.data.k", "must lie in", str(k))


@pytest.mark.parametrize("split", ["strip", "rect"])
def test_structured_split_k_in_range_is_accepted(split):
    exp = check_experiment(make_params(data={"split": split, "k": 3}), "e")
    assert exp.runs[0].config.data.k == 3


def test_sequence_loss_needs_a_transformer():
    params = make_params(model={"family": "mlp", "hidden": [16]}, train={"loss_on": "sequence"})
    assert_names(config_error(params), "experiments.e.train.loss_on", "'mlp'", "transformer")
    # the same loss with a transformer is fine
    ok = make_params(train={"loss_on": "sequence"})
    assert check_experiment(ok, "e").runs[0].config.train.loss_on == "sequence"


def test_sequence_loss_needs_next_token_targets():
    """The offset encoding `[x, y + d, =]` has only the answer as a target."""
    data = {"encoding": "offset", "operand_offset": 0}
    params = make_params(data=data, train={"loss_on": "sequence"})
    assert_names(config_error(params), "experiments.e.train.loss_on", "next-token targets")
    assert check_experiment(make_params(data=data), "e").runs[0].config.data.encoding == "offset"


def test_another_model_family_takes_none_of_the_defaults_model_keys():
    """Seed 004's MLP on the binary operations: the task's defaults configure a transformer
    (d_model, n_heads...), which the MLP would reject as unknown keys; naming another family
    starts its model block afresh. The same family still merges key by key."""
    params = make_params(model={"family": "mlp", "hidden": [16], "d_embed": 8})
    params["defaults"]["arithmetic"]["model"] = dict(TINY_MODEL)
    cfg = check_experiment(params, "e").runs[0].config
    assert cfg.model_name == "mlp" and cfg.model.hidden == [16] and cfg.model.d_embed == 8
    same = make_params(model={"d_model": 24})
    same["defaults"]["arithmetic"]["model"] = dict(TINY_MODEL)
    block = resolve_block(same, "e")
    assert block["model"] == {**TINY_MODEL, "d_model": 24}


def test_one_hot_embedding_needs_a_dimension_per_token():
    model = {"family": "mlp", "hidden": [16], "embedding": "one_hot", "d_embed": 8}
    params = make_params(model=model)  # x+y mod 7, equation encoding: 9 tokens
    assert_names(config_error(params), "experiments.e.model.d_embed", "(9)", "got 8")
    params["experiments"]["e"]["model"]["d_embed"] = 9
    assert check_experiment(params, "e").runs[0].config.model.embedding == "one_hot"


def test_unknown_figure_kind():
    params = make_params(figures=["curves", "spaghetti"])
    assert_names(
        config_error(params), "experiments.e.figures[1]", "unknown figure kind", "spaghetti"
    )


def test_unknown_layer_group():
    params = make_params(train={"layers": {"block7": {"period": 2}}})
    assert_names(config_error(params), "experiments.e.train.layers.block7", "no such layer group")


@pytest.mark.parametrize("preset", ["fast", "", None])
def test_bad_preset(preset):
    params = make_params()
    params["preset"] = preset
    assert_names(config_error(params), "preset", "expected one of")


def test_unknown_experiment_and_task():
    assert_names(config_error(make_params(), "nope"), "experiments.nope", "no such experiment")
    assert_names(config_error(make_params(task="chess")), "experiments.e.task", "'chess'")


def test_bad_value_inside_a_grid_names_key_and_run():
    params = make_params(grid={"train.lr": [0.001, "abc"]})
    err = config_error(params)
    assert_names(err, "experiments.e.train.lr", "expected a number", "lr=abc")


@pytest.mark.parametrize(
    ("grid", "key"),
    [
        ({"data.op": []}, "experiments.e.grid.data.op"),
        ({"data.op": "x+y"}, "experiments.e.grid.data.op"),
        ({"optimizer.lr": [1]}, "experiments.e.grid.optimizer.lr"),
        ([{"seed": [0]}, {"task": ["x"]}], "experiments.e.grid[1].task"),
    ],
)
def test_bad_grid_axis(grid, key):
    assert_names(config_error(make_params(grid=grid)), key)


# --- grid expansion ------------------------------------------------------------------------


def test_grid_is_the_cartesian_product():
    params = make_params(grid={"data.op": ["x+y", "x-y"], "seed": [0, 1, 2]})
    exp = load_experiment(params, "e")
    assert exp.axes == ["op", "seed"]
    assert exp.condition_axes == ["op"]
    got = [(r.config.data.op, r.config.seed) for r in exp.runs]
    assert got == [(op, s) for op in ("x+y", "x-y") for s in (0, 1, 2)]
    assert [r.labels for r in exp.runs] == [{"op": op, "seed": s} for op, s in got]
    assert [r.run_id for r in exp.runs] == [f"r{i:04d}" for i in range(6)]
    assert len({r.config.fingerprint() for r in exp.runs}) == 6


def test_list_of_grids_is_the_union():
    params = make_params(
        grid=[
            {"data.op": ["x+y"], "train.lr": [0.001, 0.01]},
            {"data.op": ["x-y"], "seed": [0, 1]},
        ]
    )
    exp = load_experiment(params, "e")
    assert exp.axes == ["op", "lr", "seed"]
    got = [(r.config.data.op, r.config.train.lr, r.config.seed) for r in exp.runs]
    assert got == [("x+y", 0.001, 0), ("x+y", 0.01, 0), ("x-y", 0.001, 0), ("x-y", 0.001, 1)]
    # axes a grid does not vary are labelled None
    assert exp.runs[0].labels == {"op": "x+y", "lr": 0.001, "seed": None}
    assert exp.runs[3].labels == {"op": "x-y", "lr": None, "seed": 1}
    # ... and left out of the condition's name (seed 004's random split beside strips of k)
    names = [condition_label(r.labels, exp.axes) for r in exp.runs]
    assert names == ["op=x+y,lr=0.001", "op=x+y,lr=0.01", "op=x-y", "op=x-y"]


def test_short_names_fall_back_to_full_path_on_collision():
    assert short_names(["data.op", "train.lr", "seed"]) == {
        "data.op": "op",
        "train.lr": "lr",
        "seed": "seed",
    }
    axes = ["train.layers.first.period", "train.layers.last.period", "data.p"]
    names = short_names(axes)
    assert names == {axes[0]: axes[0], axes[1]: axes[1], "data.p": "p"}
    exp = load_experiment(make_params(grid={axes[0]: [1, 2], axes[1]: [3], "data.p": [7]}), "e")
    assert exp.axes == [axes[0], axes[1], "p"]
    assert exp.runs[1].labels == {axes[0]: 2, axes[1]: 3, "p": 7}
    assert exp.runs[1].config.train.layers["first"].period == 2


@pytest.mark.parametrize(
    "grid",
    [
        {"seed": [0, 0]},
        {"train.lr": [0.001, "1e-3"]},  # the same number spelled twice
        [{"seed": [0, 1]}, {"seed": [1, 2]}],  # overlapping grids
    ],
)
def test_duplicate_grid_points_are_refused(grid):
    err = config_error(make_params(grid=grid))
    assert_names(err, "experiments.e.grid", "same run")


# --- presets -------------------------------------------------------------------------------


def quick_params() -> dict:
    params = make_params(
        train={"lr": 0.01},
        grid={"seed": [0, 1, 2]},
        quick={"train": {"steps": 4}, "grid": {"seed": [5]}},
    )
    params["defaults"]["arithmetic"]["quick"] = {"data": {"p": 5}, "train": {"steps": 3}}
    return params


def test_full_preset_ignores_quick_blocks():
    exp = load_experiment(quick_params(), "e")
    assert [r.config.seed for r in exp.runs] == [0, 1, 2]
    cfg = exp.runs[0].config
    assert cfg.data.p == 7 and cfg.train.steps == 10 and cfg.train.lr == 0.01


def test_quick_preset_applies_default_then_experiment_overrides():
    params = quick_params()
    params["preset"] = "quick"
    exp = load_experiment(params, "e")
    assert [r.config.seed for r in exp.runs] == [5]  # experiment's quick grid
    cfg = exp.runs[0].config
    assert cfg.data.p == 5  # defaults.arithmetic.quick
    assert cfg.train.steps == 4  # experiments.e.quick beats defaults.arithmetic.quick
    assert cfg.train.lr == 0.01  # untouched settings survive
    assert cfg.train.batch_size == 8


def test_an_experiments_own_setting_beats_the_defaults_quick_block():
    """Under the quick preset the defaults' `quick:` settings apply to the defaults, so a
    setting in the experiment's main block still wins (until the twenty-seventh session the
    defaults' quick block came after it: `-S experiments.e.train.lr=...` did nothing there)."""
    params = quick_params()
    params["defaults"]["arithmetic"]["quick"]["train"]["lr"] = 0.5
    params["preset"] = "quick"
    assert load_experiment(params, "e").runs[0].config.train.lr == 0.01
    params["experiments"]["e"]["quick"]["train"]["lr"] = 0.2
    assert load_experiment(params, "e").runs[0].config.train.lr == 0.2


def test_resolve_block_order():
    params = quick_params()
    params["preset"] = "quick"
    block = resolve_block(params, "e")
    assert "quick" not in block
    assert block["train"] == {"steps": 4, "batch_size": 8, "lr": 0.01}


def test_bad_value_in_quick_block_is_reported_under_quick_preset():
    params = quick_params()
    params["experiments"]["e"]["quick"]["train"]["steps"] = 0
    load_experiment(params, "e")  # full preset never reads it
    params["preset"] = "quick"
    assert_names(config_error(params), "experiments.e.quick.train.steps", "positive")


def test_a_bad_value_is_reported_where_params_yaml_sets_it():
    """In the defaults, the defaults' quick block or the experiment's quick block: the key
    named is the one to edit (it used to be `experiments.<name>...` whatever set it)."""
    params = quick_params()
    params["defaults"]["arithmetic"]["train"]["lrr"] = 1
    assert_names(config_error(params), "defaults.arithmetic.train.lrr", "unknown key")
    params = quick_params()
    params["defaults"]["arithmetic"]["quick"]["train"]["steps"] = 0
    load_experiment(params, "e")  # the full preset never reads a quick block
    params["experiments"]["e"]["quick"]["train"].pop("steps")
    params["preset"] = "quick"
    assert_names(config_error(params), "defaults.arithmetic.quick.train.steps", "positive")
    params = quick_params()
    params["experiments"]["e"]["train"]["lr"] = "fast"
    assert_names(config_error(params), "experiments.e.train.lr")


# --- a stage with bad params -----------------------------------------------------------------


def test_stage_with_bad_params_exits_with_one_line_and_no_output(tmp_path):
    params = with_value(make_params(), "experiments.e.data.op", "x%y")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "stages.generate", "e"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "experiments.e.data.op" in lines[0]
    assert "unknown operation" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()


def test_stage_with_good_params_writes_its_output(tmp_path, monkeypatch):
    """The counterpart of the test above (in-process, to spare a second interpreter start):
    the same entry point succeeds on valid params and writes its output."""
    from stages import generate

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(make_params()))
    monkeypatch.chdir(tmp_path)
    generate.main("e")
    manifest = tmp_path / "data" / "datasets" / "e" / "manifest.json"
    assert manifest.is_file()
    assert '"run_id": "r0000"' in manifest.read_text()
    assert not (tmp_path / "data" / "datasets" / "e.partial").exists()


def test_reading_configs_and_analysing_runs_imports_no_torch():
    """The analysis stages read configs and finished runs only: importing torch would cost
    each of them ~1.5-2 s, fourteen times a pipeline."""
    code = (
        "import sys, stages.analyze, stages.evaluate, stages.figures, stages.toyfit, "
        "grokpipe.config.validate; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_transfer_from_an_experiment_it_does_not_depend_on_is_refused():
    from stages.transfer import check_source_declared

    check_source_declared("signed", REPO / "dvc.yaml")  # the shipped source is declared
    with pytest.raises(ConfigError) as err:
        check_source_declared("ops", REPO / "dvc.yaml")
    assert err.value.key == "transfer.train.init_from"
    assert "data/runs/ops" in str(err.value) and "stages.transfer.deps" in str(err.value)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("transfer", "transfer stage"),
        ("toy_model", "toymodel stage"),
        ("toyfit_ops", "toyfit_"),
        ("a/b", "letters, digits"),
        ("x y", "letters, digits"),
    ],
)
def test_experiment_names_that_clash_with_other_outputs_are_refused(name, reason):
    params = make_params()
    params["experiments"] = {name: params["experiments"]["e"]}
    with pytest.raises(ConfigError) as err:
        check_experiment(params, name)
    assert err.value.key == f"experiments.{name}" and reason in err.value.reason
