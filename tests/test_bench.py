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
