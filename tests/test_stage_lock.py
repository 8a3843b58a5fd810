"""One training process per experiment: a second one fails at once with a message naming the
holder, and never touches the first one's checkpoints."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from grokpipe import io


def test_a_second_holder_fails_at_once_and_the_lock_frees_on_exit(tmp_path):
    lock = tmp_path / "deep" / "x.lock"
    busy = r"training of 'x' is already running \(pid \d+"
    first, second = (io.exclusive(lock, "training of 'x'") for _ in range(2))
    with first, pytest.raises(io.StageError, match=busy), second:
        pass
    with io.exclusive(lock, "training of 'x'"):  # released: taken again
        pass


def test_a_lock_held_by_a_killed_process_is_free(tmp_path):
    lock = tmp_path / "x.lock"
    holder = textwrap.dedent(f"""
        import sys
        from grokpipe import io
        with io.exclusive({str(lock)!r}, "x"):
            print("held", flush=True)
            sys.stdin.readline()
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(io.StageError, match=rf"pid {proc.pid}"), io.exclusive(lock, "x"):
            pass
    finally:
        proc.kill()
        proc.wait()
    with io.exclusive(lock, "x"):  # the kernel dropped the dead holder's lock
        pass


def test_the_train_stage_refuses_to_train_an_experiment_already_training(tmp_path, monkeypatch):
    import stages.train as train_stage

    monkeypatch.chdir(tmp_path)
    exp = SimpleNamespace(name="ops", runs=[], options=SimpleNamespace(save_weights=False))

    def must_not_train(*args, **kwargs):
        raise AssertionError("trained although another process holds the experiment")

    monkeypatch.setattr(train_stage, "train_members", must_not_train)
    ckpt = tmp_path / "data" / "checkpoints" / "ops"
    ckpt.mkdir(parents=True)
    (ckpt / "job0.pt").write_bytes(b"the other process's checkpoint")
    held = io.exclusive(tmp_path / "data" / "checkpoints" / "ops.lock", "the other process")
    busy = pytest.raises(io.StageError, match="training of 'ops' is already running")
    with held, busy:
        train_stage.train_experiment(exp, [], engine=None)
    assert (ckpt / "job0.pt").read_bytes() == b"the other process's checkpoint"


def test_stage_main_prints_a_stage_error_in_one_line_and_exits_1(capsys):
    @io.stage_main
    def stage():
        raise io.StageError("training of 'ops' is already running (pid 1; lock x)")

    with pytest.raises(SystemExit) as exit_info:
        stage()
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == (
        "error: training of 'ops' is already running (pid 1; lock x)\n"
    )
