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
    assert not path.with_name("job.pt.tmp").exists()


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
