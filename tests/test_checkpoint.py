"""Checkpoints written beside training: whole files, errors that surface, and snapshots that
do not change while they are being written."""

from __future__ import annotations

import threading

import pytest
import torch

from grokpipe.train import checkpoint as ckpt
from grokpipe.train.ensemble import EngineOptions, EnsembleTrainer
from grokpipe.train.members import members_from_block
from tests.test_engine import block


def test_background_writer_writes_whole_files_in_order(tmp_path):
    writer = ckpt.BackgroundWriter()
    path = tmp_path / "job.pt"
    for step in range(3):
        writer.submit(path, {"fingerprint": "f", "step": step, "x": torch.full((1000,), step)})
    writer.wait()
    saved = ckpt.load(path, "f")
    assert saved["step"] == 2 and torch.equal(saved["x"], torch.full((1000,), 2))
    assert not list(tmp_path.glob("*.tmp"))


def test_background_writer_raises_a_failed_write(tmp_path):
    writer = ckpt.BackgroundWriter()
    (tmp_path / "blocked").write_text("a file where the checkpoint folder should be")
    writer.submit(tmp_path / "blocked" / "job.pt", {"fingerprint": "f"})
    with pytest.raises(OSError):
        writer.wait()
    writer.wait()  # reported once


def test_background_writer_keeps_a_write_error_behind_a_training_error(tmp_path):
    writer = ckpt.BackgroundWriter()
    (tmp_path / "blocked").write_text("")
    writer.submit(tmp_path / "blocked" / "job.pt", {})
    writer.wait(raise_error=False)  # as while a training error is raised: it is not replaced


def test_submit_waits_for_the_previous_write(tmp_path, monkeypatch):
    """A trainer reuses its snapshot buffers at the next checkpoint, so two writes must never
    overlap."""
    running, overlapped = threading.Event(), []
    real_save = ckpt.save

    def slow_save(path, obj):
        overlapped.append(running.is_set())
        running.set()
        threading.Event().wait(0.2)
        real_save(path, obj)
        running.clear()

    monkeypatch.setattr(ckpt, "save", slow_save)
    writer = ckpt.BackgroundWriter()
    for i in range(3):
        writer.submit(tmp_path / "job.pt", {"i": i})
    writer.wait()
    assert overlapped == [False, False, False]


def test_cpu_snapshot_does_not_alias_the_training_tensors():
    t = EnsembleTrainer(
        members_from_block(block({"seed": [0, 1]}, steps=20)), EngineOptions(progress=False)
    )
    snap = t.state_dict(reuse_host_buffers=True)
    before = {k: v.clone() for k, v in snap["tensors"].items()}
    t.run()
    same = {
        k: torch.equal(v.nan_to_num(), snap["tensors"][k].nan_to_num()) for k, v in before.items()
    }
    changed = [k for k, unchanged in same.items() if not unchanged]
    assert not changed, f"training changed the snapshot of {changed}"
    assert not torch.equal(before["param.embed"], t.params["embed"].detach())


def test_two_writers_of_one_checkpoint_never_break_each_others_file(tmp_path):
    """A rerun beside a leftover worker of the stage it replaces: both save the same path."""
    path, errors = tmp_path / "job.pt", []

    def write(tag):
        try:
            for i in range(30):
                ckpt.save(path, {"fingerprint": "f", "tag": tag, "x": torch.full((20000,), i)})
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(tag,)) for tag in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert ckpt.load(path, "f")["tag"] in "ab"
    assert not list(tmp_path.glob("*.tmp"))


ORPHAN = """
import sys, time, torch.multiprocessing as mp
from grokpipe.train import runner

def child():
    runner._exit_with_parent()
    time.sleep(60)

if __name__ == "__main__":
    runner.PARENT_POLL_S = 0.1
    p = mp.get_context("spawn").Process(target=child, daemon=True)
    p.start()
    print(p.pid, flush=True)
    time.sleep(1.0)
    import os
    os._exit(0)  # as a SIGKILL: no clean-up of daemon children
"""


def test_a_worker_ends_when_its_stage_is_killed(tmp_path):
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = tmp_path / "orphan.py"
    script.write_text(ORPHAN)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    stage = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE)
    pid = int(stage.stdout.readline())  # not `communicate`: the worker holds the pipe too
    stage.wait(timeout=60)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(pid, 9)
    raise AssertionError("the worker outlived its stage")


def test_weights_of_a_result_trained_without_them_are_refused_not_written_empty(tmp_path):
    import numpy as np

    from grokpipe import runstore
    from grokpipe.config.experiment import load_experiment
    from grokpipe.train.ensemble import MemberResult

    params = {"defaults": {}, "experiments": {"e": {**block({"seed": [0]}), "options": {}}}}
    params["experiments"]["e"]["options"] = {"save_weights": True}
    exp = load_experiment(params, "e")
    steps = np.array([0, 10])
    metrics = {"train_loss": np.array([1.0, 0.5])}
    results = {exp.runs[0].run_id: MemberResult(exp.runs[0].run_id, steps, metrics)}
    with pytest.raises(RuntimeError, match="no final weights"):
        runstore.write(tmp_path / "runs", exp, results, [])
    assert not (tmp_path / "runs").exists()


def test_an_output_folder_is_replaced_whole_even_if_deleting_the_old_one_fails(
    tmp_path, monkeypatch
):
    import shutil

    from grokpipe import io

    out = tmp_path / "runs"
    with io.atomic_dir(out) as tmp:
        (tmp / "a").write_text("old")
    real = shutil.rmtree

    def dies_on_the_old(path, *args, **kwargs):
        if str(path).endswith(".old" + io.PARTIAL_SUFFIX) and not kwargs.get("ignore_errors"):
            raise KeyboardInterrupt  # as a kill in the middle of the delete
        return real(path, *args, **kwargs)

    monkeypatch.setattr(io.shutil, "rmtree", dies_on_the_old)
    with pytest.raises(KeyboardInterrupt), io.atomic_dir(out) as tmp:
        (tmp / "a").write_text("new")
    assert (out / "a").read_text() == "new"  # the new output is in place, whole
    monkeypatch.setattr(io.shutil, "rmtree", real)
    with io.atomic_dir(out) as tmp:  # the next write clears the leftover
        (tmp / "a").write_text("newer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
