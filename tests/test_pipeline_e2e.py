"""End to end: the real `dvc` pipeline in a temporary git repository, on tiny params.

Runs `dvc repro`, checks the metrics, re-runs and sees every stage skipped, then changes one
experiment's param with `dvc exp run -S` and checks that only that experiment's stages ran and
that `dvc metrics diff` shows the change.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_engine import TINY_TRANSFORMER

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "preset": "full",
    "engine": {
        "devices": "cpu",
        "compile": False,
        "cuda_graph": False,
        "max_members": 64,
        "eval_chunk_rows": 512,
        "progress": False,
    },
    "defaults": {
        "arithmetic": {
            "seed": 0,
            "data": {"p": 11, "split": "random", "train_fraction": 0.5},
            "model": dict(TINY_TRANSFORMER),
            "train": {"steps": 120, "batch_size": 64, "lr": 0.003, "weight_decay": 1.0},
            "eval": {"every": 20, "log_points": 5},
        }
    },
    "experiments": {
        "tiny": {
            "title": "tiny",
            "task": "arithmetic",
            "train": {"lr": 0.003},
            "grid": {"data.op": ["x+y", "x-y"], "seed": [0]},
            # every figure kind of the binary operations that a 2-run grid can draw
            "figures": ["curves", "grok_steps", "value_counts", "post_grok_drops"],
        },
        "signed": {
            "title": "signed",
            "task": "arithmetic",
            "options": {"save_weights": True},
            "grid": {"data.op": ["int_x-y"], "seed": [0]},
            "figures": ["curves"],
        },
    },
    "transfer": {
        "title": "transfer",
        "task": "arithmetic",
        "data": {"op": "int_odd_div_even_sub"},
        "train": {"steps": 40},
        "grid": {"train.init_from": ["scratch", "signed:op=int_x-y"], "seed": [0]},
        "figures": ["curves"],
    },
}


def _toy_model_block() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())["toy_model"]


def run(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    if shutil.which("dvc") is None and not (Path(sys.executable).parent / "dvc").exists():
        pytest.fail("dvc is not installed")
    work = tmp_path_factory.mktemp("pipeline")
    for item in ("dvc.yaml", "stages", "grokpipe"):
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, work / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, work / item)
    params = dict(TINY, toy_model=_toy_model_block())
    params["toy_model"]["fit"]["restarts"] = 1
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PYTHONPATH": str(work),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    run(["git", "init", "-q"], work, env)
    run(["dvc", "init", "-q"], work, env)
    run(["dvc", "config", "core.analytics", "false"], work, env)
    shutil.copytree(ROOT / ".dvc" / "plots", work / ".dvc" / "plots")
    run(["git", "add", "-A"], work, env)
    run(["git", "commit", "-qm", "tiny pipeline"], work, env)
    return work, env


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def test_repro_then_cached_then_one_param_change(repo):
    work, env = repo
    first = run(["dvc", "repro"], work, env)
    expected = {
        "generate",
        "precompile",
        "train@tiny",
        "analyze@tiny",
        "train@signed",
        "analyze@signed",
        "toymodel",
        "transfer",
        "report",
    }
    assert ran_stages(first) == expected

    metrics = json.loads((work / "reports/metrics/tiny.json").read_text())
    assert set(metrics["conditions"]) == {"op=x+y", "op=x-y"}
    for cond in metrics["conditions"].values():
        assert cond["seeds"] == 1
        assert 0 <= cond["final_train_acc"]["mean"] <= 1
    assert metrics["summary"]["runs"] == 2
    assert (work / "reports/curves/tiny.tsv").read_text().startswith("step\tcondition")
    assert list((work / "reports/figures/tiny").glob("*.png"))
    for name in ("tiny", "signed", "transfer"):  # analyze@ and transfer fit the toy model too
        fits = json.loads((work / f"reports/metrics/toyfit_{name}.json").read_text())
        # every run has a record; tiny runs may be too short for a fit, which is recorded
        assert len(fits["runs"]) == fits["summary"]["runs"] > 0
        assert (work / f"reports/figures/toyfit_{name}/fits.png").is_file()
    transfer = json.loads((work / "reports/metrics/transfer.json").read_text())
    assert set(transfer["conditions"]) == {"init_from=scratch", "init_from=signed:op=int_x-y"}
    # what the fine-tuned run started from: its source, whether that grokked (these 120 steps
    # are too few, which the stage says), and the share of validation rows int_x-y already
    # answers (the even divisors, about half)
    facts = transfer["analyses"]["transfer"]
    (tuned,) = facts["runs"].values()
    assert tuned["source"] == "signed/r0000"
    assert 0.3 < tuned["head_start_val_acc"] < 0.7
    assert f"transfer: {facts['verdict']}" in first
    if tuned["source_grokked_at"] is None:
        assert "fine-tunes a model that did not grok" in first
    toy = json.loads((work / "reports/metrics/toy_model.json").read_text())
    assert toy
    assert (work / "reports/index.html").stat().st_size > 10_000

    run(["git", "add", "-A"], work, env)
    run(["git", "commit", "-qm", "results"], work, env)
    again = run(["dvc", "repro"], work, env)
    assert ran_stages(again) == set()
    status = run(["dvc", "status"], work, env)
    assert "up to date" in status

    changed = run(["dvc", "exp", "run", "-S", "experiments.tiny.train.lr=0.01"], work, env)
    # generate and precompile re-run (each covers every experiment), but signed's dataset and
    # precompile marker are unchanged, so nothing of signed (nor transfer, which depends on
    # it) trains again
    assert ran_stages(changed) == {"generate", "precompile", "train@tiny", "analyze@tiny", "report"}
    diff = run(["dvc", "metrics", "diff", "--json"], work, env)
    changes = json.loads(diff)
    assert "reports/metrics/tiny.json" in changes
    assert "reports/metrics/signed.json" not in changes
    moved = changes["reports/metrics/tiny.json"]
    assert any(k.endswith("final_train_loss.mean") and v["diff"] for k, v in moved.items())

    # what only the analysis reads (here the figure list) re-runs the analysis, not the
    # training: the datasets' experiment.json changes, their manifest.json does not
    run(["git", "add", "-A"], work, env)
    run(["git", "commit", "-qm", "lr 0.01"], work, env)
    trained = (work / "data/runs/tiny/history.tsv").read_bytes()
    redrawn = run(["dvc", "exp", "run", "-S", "experiments.tiny.figures=[curves]"], work, env)
    assert ran_stages(redrawn) == {"generate", "precompile", "analyze@tiny", "report"}
    assert (work / "data/runs/tiny/history.tsv").read_bytes() == trained
    # the curves figure kind alone: its accuracy and loss panels, no grok-steps figure
    assert sorted(p.stem for p in (work / "reports/figures/tiny").glob("*.png")) == [
        "accuracy",
        "loss",
    ]
    # each experiment's params are in the lock file once, under generate
    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    holding = sorted(k for k, s in lock.items() if "experiments" in json.dumps(s.get("params")))
    assert holding == ["generate"]
