"""The engine's contract on CPU: a run does not depend on its ensemble, per-member
hyperparameters and early stopping behave as if each run trained alone, and a killed training
resumes from its checkpoint to exactly the result of an uninterrupted one."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from grokpipe.train.ensemble import (
    CUDA_PREFIX_MIN_MEMBERS,
    EngineOptions,
    EnsembleTrainer,
    group_key,
)
from grokpipe.train.members import members_from_block
from grokpipe.train.runner import EngineConfig, should_compact, train_members

ROOT = Path(__file__).resolve().parents[1]
# the smallest transformer the engine's tests train (other test modules import it)
TINY_TRANSFORMER = {"family": "transformer", "n_layers": 1, "d_model": 32, "n_heads": 4, "d_ff": 64}


def block(grid, steps=200, every=10, p=13, **train):
    return {
        "task": "arithmetic",
        "data": {"op": "x+y", "p": p},
        "model": dict(TINY_TRANSFORMER),
        "train": {"steps": steps, "batch_size": 32, **train},
        "eval": {"every": every, "log_points": 0},
        "grid": grid,
    }


def train(members):
    t = EnsembleTrainer(members, EngineOptions(progress=False))
    assert t.run() == "done"
    return t.results()


def max_rel(a, b):
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def test_small_ensembles_on_a_gpu_take_the_plain_forward():
    """Shared prefixes from `prefix_min_members` runs up (on a GPU, where a small ensemble is
    bound by kernel count, `CUDA_PREFIX_MIN_MEMBERS`; on a CPU, every ensemble). A smaller
    ensemble cut from a sharing one (`subset`, as compaction does) keeps sharing, so that its
    compiled step carries over."""
    assert CUDA_PREFIX_MIN_MEMBERS > 1
    members = members_from_block(block({"seed": [0, 1, 2, 3]}))
    assert EnsembleTrainer(members[:1], EngineOptions(progress=False)).prefix_len == 2
    opts = EngineOptions(progress=False, prefix_min_members=3)
    assert EnsembleTrainer(members[:2], opts).prefix_len == 0
    four = EnsembleTrainer(members, opts)
    assert four.prefix_len == 2
    assert four.subset([1, 3]).prefix_len == 2
    plain = EnsembleTrainer(members, replace(opts, share_prefixes=False))
    assert plain.subset([1, 3]).prefix_len == 0


def trainers_built_by_the_runner(monkeypatch) -> list:
    """The list each trainer the runner builds from now on is appended to."""
    from grokpipe.train import runner

    built = []

    class Recording(EnsembleTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(runner, "EnsembleTrainer", Recording)
    return built


def test_a_resumed_job_keeps_the_forward_of_the_whole_job(tmp_path, monkeypatch):
    """A job resumed from a checkpoint taken after some of its runs stopped early has fewer
    runs left than it started with. It keeps the whole job's forward (the one its compiled
    step was saved for), whatever the small-ensemble rule says about the runs left."""
    from grokpipe.train import checkpoint as ckpt
    from grokpipe.train import runner

    members = members_from_block(block({"seed": [0, 1, 2]}, steps=40, every=10))
    opts = EngineOptions(progress=False, prefix_min_members=3)
    whole = EnsembleTrainer(members, opts)
    assert whole.prefix_len == 2 and whole.run() == "done"
    left = whole.subset([0, 1])  # run 2 stopped early; runs 0 and 1 go on
    job = runner.Job("job", "t", members, keep_params=False)
    saved = {
        "fingerprint": job.job_id,
        "finished": {members[2].run_id: whole.results()[2]},
        "remaining": [m.run_id for m in members[:2]],
        "trainer": left.state_dict(),
        "timings": [],
    }
    ckpt.save(tmp_path / "job.pt", saved)
    built = trainers_built_by_the_runner(monkeypatch)
    out = runner._run_job(job, opts, tmp_path)
    assert [(t.E, t.prefix_len) for t in built] == [(2, 2)]
    assert [r.run_id for r in out["results"]] == [m.run_id for m in members]


def test_member_of_8_matches_run_alone():
    members = members_from_block(block({"seed": list(range(8))}))
    together = train(members)
    for i in (0, 4, 7):
        alone = train([members[i]])[0]
        assert max_rel(together[i].metrics["train_loss"], alone.metrics["train_loss"]) < 1e-5
        assert max_rel(together[i].metrics["val_loss"], alone.metrics["val_loss"]) < 1e-5


def test_shared_prefixes_train_like_the_plain_forward():
    members = members_from_block(block({"seed": [0, 1, 2]}))
    runs = {}
    for share in (True, False):
        t = EnsembleTrainer(members, EngineOptions(progress=False, share_prefixes=share))
        assert t.prefix_len == (2 if share else 0)
        assert t.run() == "done"
        runs[share] = t.results()
    for a, b in zip(runs[True], runs[False]):
        assert max_rel(a.metrics["train_loss"], b.metrics["train_loss"]) < 1e-4
        assert max_rel(a.metrics["val_loss"], b.metrics["val_loss"]) < 1e-4


def test_deterministic_gathers_train_like_the_indexed_ones():
    """`engine.deterministic` changes only the order in which gathered rows' gradients are
    summed: the same runs train to the same curves, with and without shared prefixes."""
    members = members_from_block(block({"seed": [0, 1, 2]}))
    for share in (True, False):
        runs = {}
        for deterministic in (False, True):
            opts = EngineOptions(progress=False, share_prefixes=share, deterministic=deterministic)
            t = EnsembleTrainer(members, opts)
            assert t.model.deterministic_gathers == deterministic
            assert t.run() == "done"
            runs[deterministic] = t.results()
        for a, b in zip(runs[True], runs[False]):
            assert max_rel(a.metrics["train_loss"], b.metrics["train_loss"]) < 1e-5
            assert max_rel(a.metrics["val_loss"], b.metrics["val_loss"]) < 1e-5


def test_per_member_hyperparameters_and_schedules():
    grid = {"train.lr": [1e-3, 3e-3], "train.weight_decay": [0.0, 1.0], "seed": [0]}
    members = members_from_block(block(grid, steps=60))
    # a frozen embedding for one member exercises per-member layer schedules too
    together = train(members)
    for i, m in enumerate(members):
        alone = train([m])[0]
        assert max_rel(together[i].metrics["train_loss"], alone.metrics["train_loss"]) < 1e-5
    losses = [r.metrics["train_loss"][-1] for r in together]
    assert len({round(float(x), 4) for x in losses}) == 4  # the settings really differ


def test_members_of_other_batch_sizes_train_as_alone():
    """`train.batch_size` may differ between members of one ensemble: each samples its own
    min(batch_size, n_train / 2) rows (the first slots of the ensemble's widest batch), as it
    does alone. Until the twenty-seventh session every member took the first one's size."""
    members = members_from_block(block({"train.batch_size": [8, 32], "seed": [0]}, steps=60))
    together = EnsembleTrainer(members, EngineOptions(progress=False))
    per_member = (together.batch_weights > 0).sum(1).tolist()
    assert per_member == [8, 32]
    assert together.run() == "done"
    for i, m in enumerate(members):
        alone = train([m])[0]
        for name in ("train_loss", "val_loss"):
            got, want = together.results()[i].metrics[name], alone.metrics[name]
            assert max_rel(got, want) < 1e-5, (m.config.train.batch_size, name)


def test_sgd_momentum_grokfast_and_frozen_layers_match_alone():
    grid = {
        "seed": [0, 1],
        "train.layers": [{}, {"first": {"frozen": True}}, {"last": {"period": 3}}],
    }
    members = members_from_block(
        block(
            grid,
            steps=40,
            optimizer="sgd",
            lr=0.1,
            momentum=0.9,
            weight_decay=0.01,
            grokfast={"alpha": 0.9, "lamb": 1.0},
        )
    )
    together = train(members)
    for i, m in enumerate(members):
        alone = train([m])[0]
        assert max_rel(together[i].metrics["train_loss"], alone.metrics["train_loss"]) < 1e-5


def test_frozen_layer_does_not_move():
    members = members_from_block(
        block({"seed": [0], "train.layers": [{"embed": {"frozen": True}}]}, steps=30)
    )
    t = EnsembleTrainer(members, EngineOptions(progress=False))
    before = t.params["embed"].clone()
    other = t.params["unembed"].clone()
    t.run()
    assert np.array_equal(before.numpy(), t.params["embed"].numpy())
    assert not np.array_equal(other.numpy(), t.params["unembed"].numpy())


def test_early_stop_and_compaction_match_runs_alone(tmp_path):
    # a low threshold that some members reach early, some late and some never
    grid = {"seed": [0, 1, 2], "train.lr": [3e-3, 1e-2]}
    members = members_from_block(block(grid, steps=800, every=20, early_stop=0.2))
    engine = EngineConfig(devices="cpu", progress=False)
    results, timings = train_members(members, engine, tmp_path, "t")
    assert timings[0]["ensembles"] > 1, "members that stopped should have left the ensemble"
    stopped = 0
    for m in members:
        r = results[m.run_id]
        alone = train([m])[0]
        assert np.array_equal(r.steps, alone.steps)
        assert max_rel(r.metrics["train_loss"], alone.metrics["train_loss"]) < 1e-5
        if r.metrics["val_acc"][-1] >= 0.2:
            stopped += 1
            assert r.steps[-1] < 800
    assert stopped >= 3


def test_a_kill_at_a_compaction_resumes_shrinking_at_the_same_steps(tmp_path, monkeypatch):
    """Killed while its ensemble shrinks, a job resumes from the checkpoint of that step and
    shrinks there first: the same ensembles at the same steps, the same results, and every
    ensemble's steps counted in the timing."""
    from grokpipe.train import ensemble

    grid = {"seed": [0, 1, 2], "train.lr": [3e-3, 1e-2]}
    b = block(grid, steps=800, every=20, early_stop=0.2, checkpoint_every=100000)
    members = members_from_block(b)
    engine = EngineConfig(devices="cpu", progress=False)
    real, shrinks = ensemble.EnsembleTrainer.subset, []

    def recorded(self, keep):
        shrinks.append((self.step_host, self.E, len(keep)))
        return real(self, keep)

    monkeypatch.setattr(ensemble.EnsembleTrainer, "subset", recorded)
    clean, clean_timing = train_members(members, engine, tmp_path / "clean", "t")
    clean_shrinks, shrinks[:] = list(shrinks), []
    assert clean_shrinks, "the test needs a compaction"

    class Killed(BaseException):
        pass

    def killed(self, keep):
        raise Killed

    monkeypatch.setattr(ensemble.EnsembleTrainer, "subset", killed)
    with pytest.raises(Killed):
        train_members(members, engine, tmp_path / "ck", "t")
    monkeypatch.setattr(ensemble.EnsembleTrainer, "subset", recorded)
    resumed, timing = train_members(members, engine, tmp_path / "ck", "t")
    assert shrinks == clean_shrinks
    assert timing[0]["model_steps"] == clean_timing[0]["model_steps"]
    for m in members:
        for name, values in clean[m.run_id].metrics.items():
            np.testing.assert_array_equal(values, resumed[m.run_id].metrics[name], err_msg=name)


def test_a_job_resumed_after_shrinking_keeps_the_plain_forward_it_had(tmp_path, monkeypatch):
    """A job with a sequence-loss run takes the plain forward; once that run has left, its
    smaller ensemble keeps the plain forward (`subset`), and so does a resume from its
    checkpoint, which would otherwise pick shared prefixes for the answer-loss runs left."""
    from grokpipe.train import checkpoint as ckpt
    from grokpipe.train import runner

    grid = {"train.loss_on": ["answer", "sequence"], "seed": [0, 1]}
    members = members_from_block(block(grid, steps=60, every=20))
    opts = EngineOptions(progress=False, prefix_min_members=1)
    whole = EnsembleTrainer(members, opts)
    assert whole.prefix_len == 0
    whole.run(should_compact=lambda t: t.step_host >= 20)
    answer = [i for i, m in enumerate(members) if m.config.train.loss_on == "answer"]
    left = whole.subset(answer)
    assert left.prefix_len == 0
    job = runner.Job("job", "t", members, keep_params=False)
    gone = [r for i, r in enumerate(whole.results()) if i not in answer]
    ckpt.save(
        tmp_path / "job.pt",
        {
            "fingerprint": "job",
            "finished": {r.run_id: r for r in gone},
            "remaining": [members[i].run_id for i in answer],
            "trainer": left.state_dict(),
            "timings": [],
        },
    )
    built = trainers_built_by_the_runner(monkeypatch)
    out = {r.run_id: r for r in runner._run_job(job, opts, tmp_path)["results"]}
    assert [(t.E, t.prefix_len) for t in built] == [(2, 0)]
    left.run()
    for r in left.results():
        for name, values in r.metrics.items():
            np.testing.assert_array_equal(values, out[r.run_id].metrics[name], err_msg=name)


def test_saving_weights_is_part_of_a_jobs_identity():
    """A result saved without final weights must not serve a rerun that keeps them."""
    from grokpipe.train.runner import plan_jobs

    members = members_from_block(block({"seed": [0, 1]}))
    plain = plan_jobs(members, 8, 1, "t", set())
    kept = plan_jobs(members, 8, 1, "t", {members[0].run_id})
    assert kept[0].keep_params and not plain[0].keep_params
    assert kept[0].job_id != plain[0].job_id


WORKER = """
import pickle, sys
from pathlib import Path
from grokpipe.train.members import members_from_block
from grokpipe.train.runner import EngineConfig, train_members
block, ckdir, out = pickle.loads(bytes.fromhex(sys.argv[1]))
members = members_from_block(block)
results, _ = train_members(members, EngineConfig(devices="cpu", progress=False), Path(ckdir), "t")
Path(out).write_bytes(pickle.dumps({k: (v.steps, v.metrics) for k, v in results.items()}))
"""


def _launch(args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    payload = pickle.dumps(args).hex()
    return subprocess.Popen([sys.executable, "-c", WORKER, payload], env=env)


def test_killed_training_resumes_to_identical_results(tmp_path):
    b = block({"seed": [0, 1, 2]}, steps=400, every=10, checkpoint_every=40)
    clean_out, resumed_out = tmp_path / "clean.pkl", tmp_path / "resumed.pkl"
    ck = tmp_path / "ck"
    proc = _launch((b, str(tmp_path / "ck_clean"), str(clean_out)))
    assert proc.wait(timeout=300) == 0
    proc = _launch((b, str(ck), str(resumed_out)))
    deadline = time.time() + 300
    while not list(ck.glob("*.pt")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # let it run past the first checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode != 0 and not resumed_out.exists()
    saved = [p for p in ck.glob("*.pt") if not p.name.endswith(".result.pt")]
    assert saved, "a checkpoint should be left behind"
    proc = _launch((b, str(ck), str(resumed_out)))
    assert proc.wait(timeout=300) == 0
    clean, resumed = pickle.loads(clean_out.read_bytes()), pickle.loads(resumed_out.read_bytes())
    assert clean.keys() == resumed.keys()
    for k in clean:
        assert np.array_equal(clean[k][0], resumed[k][0])
        for name, values in clean[k][1].items():
            np.testing.assert_array_equal(values, resumed[k][1][name], err_msg=name)


def test_full_batch_trains_each_member_on_exactly_its_training_rows():
    """`batch_size: full` (seed 004): every step takes each member's whole training list once,
    weighted 1/n_train, padded to the longest list with weight 0, never a validation row; and
    members of other training fractions train as they do alone."""
    grid = {"data.train_fraction": [0.3, 0.6], "seed": [0]}
    members = members_from_block(block(grid, steps=40, batch_size="full"))
    t = EnsembleTrainer(members, EngineOptions(progress=False))
    n_train = [len(m.train_idx) for m in members]
    assert t.batch == max(n_train)
    rows = t.train_list[:, : t.batch]
    for i, m in enumerate(members):
        w = t.batch_weights[i]
        assert int((w > 0).sum()) == n_train[i]
        assert torch.allclose(w[: n_train[i]], torch.full((n_train[i],), 1 / n_train[i]))
        assert sorted(rows[i, : n_train[i]].tolist()) == sorted(m.train_idx.tolist())
    assert t.run() == "done"
    for i, m in enumerate(members):
        alone = train([m])[0]
        for name in ("train_loss", "val_loss"):
            got, want = t.results()[i].metrics[name], alone.metrics[name]
            assert max_rel(got, want) < 1e-5, (m.config.data.train_fraction, name)


def test_cpu_training_flushes_subnormal_floats(tmp_path):
    """Past memorisation, gradients and Adam's moments decay into subnormals, which x86 CPUs
    compute ~100x slower (seed 004's full-batch runs: 16 ms a step, then 167 ms)."""
    members = members_from_block(block({"seed": [0]}, steps=2, every=2))
    try:
        torch.set_flush_denormal(False)
        train_members(members, EngineConfig(devices="cpu", progress=False), tmp_path, "t")
        assert torch.tensor([1e-40]).item() == 0.0
    finally:
        torch.set_flush_denormal(False)


def test_med_probe_matches_its_definition():
    """Seed 004's mean embedding difference, logged at each evaluation, from the embedding."""
    members = members_from_block(block({"seed": [0, 1]}, steps=20, every=20))
    t = EnsembleTrainer(members, EngineOptions(progress=False))
    t.run()
    for i, r in enumerate(t.results(keep_params=True)):
        emb = r.final_params["embed"]
        ops = emb[:13]  # x+y mod 13: both operands use the value tokens 0..12
        expected = (ops[1:] - ops[:-1]).norm(dim=-1).mean().item()
        assert abs(r.metrics["med"][-1] - expected) < 1e-5 * expected, i
    s5 = members_from_block({**block({"seed": [0]}, steps=2), "data": {"op": "s5"}})
    t = EnsembleTrainer(s5, EngineOptions(progress=False))
    t.run()
    assert np.isnan(t.results()[0].metrics["med"]).all()


def test_one_hot_mlp_reads_its_med_from_the_first_hidden_layer():
    """Seed 004's fixed one-hot embedding: nothing to train in it, so the MED walks the first
    hidden layer's activations over the equal-operand inputs [i, i + d, =], i = 0, 1, ...;
    x/y (divisors 1..p-1) beside x+y in one ensemble, each with its own diagonal."""
    p = 11
    mlp = {"family": "mlp", "embedding": "one_hot", "d_embed": 2 * p + 1, "hidden": [24, 24]}
    spec = {
        **block({"data.op": ["x+y", "x/y"], "seed": [0]}, steps=30, every=30, p=p),
        "model": mlp,
    }
    spec["data"] = {"op": "x+y", "p": p, "encoding": "offset"}  # d = p: 2p + 1 tokens
    members = members_from_block(spec)
    t = EnsembleTrainer(members, EngineOptions(progress=False))
    assert "embed" not in dict(t.model.named_parameters())
    assert [g for g, _ in t.model.layer_groups()] == ["layer0", "layer1", "layer2"]
    assert t.run() == "done"
    for m, r in zip(members, t.results(keep_params=True)):
        w0, b0 = r.final_params["w0"], r.final_params["b0"]  # [3 * d_embed, 24], [24]
        values = range(1, p) if m.config.data.op == "x/y" else range(p)
        onehots = torch.zeros(len(values), 3 * mlp["d_embed"])
        for row, v in enumerate(values):
            for pos, token in enumerate((v, v + p, 2 * p)):
                onehots[row, pos * mlp["d_embed"] + token] = 1
        h = torch.relu(onehots @ w0 + b0)
        expected = (h[1:] - h[:-1]).norm(dim=-1).mean().item()
        assert abs(r.metrics["med"][-1] - expected) < 1e-5 * expected, m.config.data.op
        alone = train([m])[0]
        assert max_rel(r.metrics["med"], alone.metrics["med"]) < 1e-5


def test_datasets_of_different_sizes_share_an_ensemble_like_runs_alone():
    """x/y (p·(p−1) rows, divisor range 1..p−1) and x+y (p² rows) in one ensemble: the smaller
    dataset is padded with rows that are never trained on or evaluated, and each member keeps
    its own MED token pairs."""
    members = members_from_block(block({"data.op": ["x+y", "x/y"], "seed": [0]}, steps=40))
    assert len(members[0].data) != len(members[1].data)
    together = EnsembleTrainer(members, EngineOptions(progress=False))
    together.run()
    for i, m in enumerate(members):
        alone = train([m])[0]
        for name in ("train_loss", "val_loss", "val_acc", "med"):
            got, want = together.results()[i].metrics[name], alone.metrics[name]
            assert max_rel(got, want) < 1e-5, (m.config.data.op, name)


def test_answer_and_sequence_loss_members_share_an_ensemble_like_runs_alone():
    """seq2val and seq2seq runs train together (full forward; answer-loss members weigh only
    the last position), each as it trains alone (alone, seq2val uses the shared-prefix
    forward: the same function, summed in another order)."""
    members = members_from_block(block({"train.loss_on": ["answer", "sequence"], "seed": [0]}))
    together = EnsembleTrainer(members, EngineOptions(progress=False))
    assert together.seq and together.prefix_len == 0
    together.run()
    for i, m in enumerate(members):
        alone = train([m])[0]
        for name in ("train_loss", "val_loss"):
            got, want = together.results()[i].metrics[name], alone.metrics[name]
            assert max_rel(got, want) < 1e-4, (m.config.train.loss_on, name)
    a, b = (r.metrics["train_loss"] for r in together.results())
    assert max_rel(a, b) > 1e-2  # the two losses really differ


def test_compaction_rule_reads_only_steps_and_members():
    """Shrinking depends on the step, the budget and the active members, never on measured
    time, so that reruns shrink at the same steps (an ensemble's size can change its bits)."""
    # 100 members, 50 000 of a 100 000-step budget to go
    assert not should_compact(80, 100, 50_000, 100_000, False), "too few members stopped"
    assert should_compact(75, 100, 50_000, 100_000, False)  # saves 12 500 steps >= 5 000
    assert not should_compact(75, 100, 10_000, 100_000, False), "saves 2 500 steps < 5 000"
    assert not should_compact(0, 100, 50_000, 100_000, False), "nothing left to train"
    assert not should_compact(1, 100, 50_000, 100_000, True), "the smaller step would compile"


def test_later_ensembles_of_one_model_reuse_the_compiled_step(monkeypatch):
    """A shrunk ensemble, or another job with the same model and settings (other task sizes,
    seeds or per-member hyperparameters), has the key of the graphs already compiled, so it
    reuses them; another shared setting resets dynamo first."""
    from grokpipe.train import ensemble

    opts = EngineOptions(progress=False)
    base = EnsembleTrainer(members_from_block(block({"seed": [0, 1, 2]})), opts)
    other_task = {**block({"seed": [3, 4]}, weight_decay=0.3), "data": {"op": "x/y", "p": 13}}
    same = [base.subset([0, 2]), EnsembleTrainer(members_from_block(other_task), opts)]
    # another step budget, checkpoint period or evaluation schedule: the same graphs
    same.append(
        EnsembleTrainer(
            members_from_block(block({"seed": [1]}, steps=50, every=5, checkpoint_every=25)), opts
        )
    )
    assert {t._compile_key() for t in same} == {base._compile_key()}
    changed = EnsembleTrainer(members_from_block(block({"seed": [0]}, betas=[0.9, 0.99])), opts)
    assert changed._compile_key() != base._compile_key()

    resets = []
    monkeypatch.setattr(ensemble.torch._dynamo, "reset", lambda: resets.append(1))
    monkeypatch.setattr(ensemble, "_compiled_key", None)
    for key in ("a", "a", "b", "b", "a"):
        ensemble._reset_dynamo_unless_reusable(key)
    assert len(resets) == 3
    for key in (None, None):  # static sizes: never reused
        ensemble._reset_dynamo_unless_reusable(key)
    assert len(resets) == 5


def test_bf16_members_train_like_runs_alone():
    """Mixed precision keeps the engine's contract: bfloat16 block products (`EnsembleModel.mm`,
    no autocast region in the graph), and member i of an ensemble trains like the run alone."""
    members = members_from_block(block({"seed": [0, 1, 2]}, steps=60, precision="bf16"))
    t = EnsembleTrainer(members, EngineOptions(progress=False))
    assert t.model.matmul_dtype is torch.bfloat16
    assert t.run() == "done"
    together = t.results()
    alone = train([members[2]])[0]
    assert np.isfinite(together[2].metrics["train_loss"]).all()
    assert max_rel(together[2].metrics["train_loss"], alone.metrics["train_loss"]) < 1e-5


@pytest.mark.parametrize("deterministic", [False, True])
def test_compiled_step_is_one_graph_reused_by_another_ensemble_size(deterministic):
    """The step and the evaluation trace as full graphs (a graph break would be an error) that
    match eager execution, and a later ensemble of another size reuses them (dynamic sizes)
    without recompiling; with deterministic gathers too (one-hot products over a dynamic
    vocabulary). Traced with "aot_eager" (no kernel generation) to stay quick on CPU."""
    members = members_from_block(block({"seed": [0, 1, 2]}, steps=40))
    opts = EngineOptions(
        progress=False, compile=True, compile_backend="aot_eager", deterministic=deterministic
    )
    eager = train(members)
    t = EnsembleTrainer(members, opts)
    assert t.run() == "done"
    for got, want in zip(t.results(), eager):
        assert max_rel(got.metrics["train_loss"], want.metrics["train_loss"]) < 1e-5
        assert max_rel(got.metrics["val_acc"] + 1, want.metrics["val_acc"] + 1) < 1e-6
    # config.patch, not monkeypatch: undoing a monkeypatch deletes the torch config entry
    with torch._dynamo.config.patch(error_on_recompile=True):
        smaller = EnsembleTrainer(members[:2], opts)
        assert smaller.run() == "done"
    for got, want in zip(smaller.results(), eager[:2]):
        assert max_rel(got.metrics["train_loss"], want.metrics["train_loss"]) < 1e-5


def test_compiled_one_hot_mlp_full_batch_step_matches_eager():
    """Seed 004's one-hot MLP, full batch: its step and its evaluation (the hidden-layer MED
    included) trace as full graphs, as on a GPU, and train as eager execution does."""
    p = 11
    spec = {
        **block({"data.split": ["random"], "seed": [0, 1]}, steps=30, p=p, batch_size="full"),
        "data": {"op": "x+y", "p": p, "encoding": "offset", "operand_offset": 0},
        "model": {"family": "mlp", "embedding": "one_hot", "d_embed": 16, "hidden": [24]},
    }
    members = members_from_block(spec)
    eager = train(members)
    opts = EngineOptions(progress=False, compile=True, compile_backend="aot_eager")
    t = EnsembleTrainer(members, opts)
    assert t.run() == "done"
    for got, want in zip(t.results(), eager):
        for name in ("train_loss", "val_loss", "med"):
            assert max_rel(got.metrics[name], want.metrics[name]) < 1e-5, name


def test_compiled_step_with_layer_schedules_matches_eager():
    """Per-parameter gates (a frozen layer, a rate-limited one) take the optimiser's column
    path; it too traces as one graph and matches eager execution."""
    grid = {"seed": [0], "train.layers": [{}, {"first": {"frozen": True}}, {"last": {"period": 3}}]}
    members = members_from_block(block(grid, steps=30))
    eager = train(members)
    opts = EngineOptions(progress=False, compile=True, compile_backend="aot_eager")
    t = EnsembleTrainer(members, opts)
    assert not t.uniform_schedule
    assert t.run() == "done"
    for got, want in zip(t.results(), eager):
        assert max_rel(got.metrics["train_loss"], want.metrics["train_loss"]) < 1e-5


def test_tasks_of_other_vocabularies_share_a_padded_ensemble_like_runs_alone():
    """S5 (122 tokens) beside x+y mod 13 (15 tokens): one ensemble padded to S5's vocabulary
    and classes, x+y's extra classes masked out of its logits. Each member trains as it does
    alone (loss, accuracy, weight norm), and its weights come back at its own sizes."""
    grid = {"data.op": ["x+y", "s5"], "train.loss_on": ["answer", "sequence"], "seed": [0]}
    members = members_from_block(block(grid, steps=30))
    assert len({group_key(m.config, m.data) for m in members[::2]}) == 1
    assert len({group_key(m.config, m.data, pad_task_sizes=False) for m in members[::2]}) == 2
    together = EnsembleTrainer(members, EngineOptions(progress=False))
    assert together.class_mask is not None
    together.run()
    got = together.results(keep_params=True)
    for i, m in enumerate(members):
        alone = EnsembleTrainer([m], EngineOptions(progress=False))
        alone.run()
        want = alone.results(keep_params=True)[0]
        for name in ("train_loss", "val_loss", "val_acc", "weight_norm"):
            label = (m.config.data.op, m.config.train.loss_on, name)
            assert max_rel(got[i].metrics[name], want.metrics[name]) < 1e-4, label
        for name, value in want.final_params.items():
            assert got[i].final_params[name].shape == value.shape, name
            torch.testing.assert_close(got[i].final_params[name], value, rtol=1e-4, atol=1e-5)


def test_a_smaller_ensemble_keeps_its_padding_and_trains_as_alone():
    """Compaction to the x+y member alone keeps S5's padded sizes (and so its compiled step);
    x+y then trains as it would have alone, and a resume rebuilds the same sizes."""
    members = members_from_block(block({"data.op": ["x+y", "s5"], "seed": [0]}, steps=30))
    mixed = EnsembleTrainer(members, EngineOptions(progress=False))
    small = mixed.subset([0])
    assert small.task_sizes == mixed.task_sizes and small.class_mask is not None
    assert small.state_dict()["task_sizes"] == mixed.task_sizes
    small.run()
    alone = train([members[0]])[0]
    for name in ("train_loss", "val_loss", "weight_norm"):
        assert max_rel(small.results()[0].metrics[name], alone.metrics[name]) < 1e-5, name


def test_compiled_padded_step_matches_eager_and_fits_other_vocabularies():
    """A padded ensemble's step (logits masked per member) traces as one graph that matches
    eager training, and a padded ensemble of other sizes and vocabularies reuses it: the
    class mask's dims are dynamic like the others'."""
    grid = {"data.op": ["x+y", "s5"], "seed": [0, 1]}
    members = members_from_block(block(grid, steps=20))
    opts = EngineOptions(progress=False, compile=True, compile_backend="aot_eager")
    eager = EnsembleTrainer(members, EngineOptions(progress=False))
    eager.run()
    t = EnsembleTrainer(members, opts)
    assert t.class_mask is not None and t.run() == "done"
    for got, want in zip(t.results(), eager.results()):
        assert max_rel(got.metrics["train_loss"], want.metrics["train_loss"]) < 1e-5
    other = members_from_block(block({"data.op": ["x-y"], "data.p": [17], "seed": [3]}, 20))
    assert other[0].data.info["vocab_size"] != members[0].data.info["vocab_size"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert EnsembleTrainer(other + members[2:], opts).run() == "done"  # p 17 and S5


def test_compiling_silences_inductors_two_advice_warnings_and_no_others():
    """Every compiled GPU step printed two multi-line pieces of inductor advice (TF32, online
    softmax) into the pipeline's log; both are choices made on purpose, other warnings stay."""
    import warnings

    from grokpipe.train.ensemble import _quiet_compile_advice

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _quiet_compile_advice()
        for text in (
            "\nOnline softmax is disabled on the fly since Inductor decides to",
            "TensorFloat32 tensor cores for float32 matrix multiplication ...",
            "something else",
        ):
            warnings.warn(text, UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else"]
