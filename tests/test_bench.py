"""`python -m grokpipe.bench` on the CPU: the command the GPU numbers in BENCHMARKS.md come
from runs end to end and writes what its table reads. No speed is asserted (a benchmark's
numbers are recorded, never tested)."""

from __future__ import annotations

import json

from grokpipe import bench


def test_bench_runs_on_the_cpu_and_writes_every_measured_part(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(
        ["--device", "cpu", "--steps", "30", "--sizes", "2", "--skip", "grok", "--out", str(out)]
    )
    report = json.loads(out.read_text())
    assert report["reference"]["steps"] == 30 and report["reference"]["steps_per_s"] > 0
    sizes = [e["members"] for e in report["engine"]]
    assert sizes == [1, 2]
    for e in report["engine"]:
        assert e["steps"] > 0 and e["model_steps_per_s"] == e["members"] * e["steps_per_s"]
        assert e["compiled_from"] == "eager"  # the CPU trains eagerly by default
    table = capsys.readouterr().out
    assert "reference loop (1 run)" in table and "engine x2" in table and "x ref" in table


def test_medians_to_99_count_only_the_seeds_that_got_there():
    runs = [
        {"seconds": 1.0, "steps": 100, "reached": True},
        {"seconds": 3.0, "steps": 300, "reached": True},
        {"seconds": 50.0, "steps": 20000, "reached": False},  # out of budget
    ]
    m = bench._medians_to_99(runs, "engine")
    assert m == {"engine_median_seconds": 2.0, "engine_median_steps": 200.0}
    assert bench._medians_to_99(runs[1:], "engine")["engine_median_seconds"] is None


def test_the_reference_is_the_engines_transformer_at_the_engines_precision(monkeypatch):
    import torch

    from grokpipe.reference import ReferenceTransformer, train_reference

    model = ReferenceTransformer(99, 97)
    for block in model.blocks:  # the engine's FFN biases start at zero
        assert not block.ff[0].bias.any() and not block.ff[2].bias.any()
    m = bench.members_from_block(bench.power_block("x/y", 13, 20, [0]))[0]
    seen = []
    real = torch.nn.functional.cross_entropy

    def spy(logits, target, *a, **k):
        seen.append(logits.dtype)
        return real(logits.float(), target, *a, **k)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy)
    train_reference(m.data, m.train_idx, m.val_idx, 2, "cpu", precision="bf16")
    assert seen == [torch.bfloat16, torch.bfloat16]  # the products ran in bfloat16
