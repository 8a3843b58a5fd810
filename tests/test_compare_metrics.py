"""`scripts/compare_metrics.py`, the science check between two pipeline runs: it names the
conditions whose verdicts (grokked seeds) differ, and reads a collected metrics archive."""

from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location(
    "compare_metrics", ROOT / "scripts/compare_metrics.py"
)
compare_metrics = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_metrics)


def metrics(grokked: dict[str, int], steps: float | None = 1000.0) -> dict:
    conditions = {
        key: {"seeds": 3, "grokked_seeds": n, "grokked_at": {"mean": steps} if n else None}
        for key, n in grokked.items()
    }
    return {"summary": {"grokked_runs": sum(grokked.values())}, "conditions": conditions}


def test_a_changed_verdict_is_named_and_the_same_ones_counted(tmp_path):
    a = {"ops": metrics({"op=x+y": 3, "op=s5_conj": 2}, 1000.0)}
    b = {"ops": metrics({"op=x+y": 3, "op=s5_conj": 3}, 1200.0), "hard": metrics({"f=0.5": 0})}
    lines = compare_metrics.compare(a, b)
    assert lines == [
        "  ops op=s5_conj: grokked 2/3 vs 3/3 1000 vs 1200",
        "ops: 1/2 conditions with the same grokked seeds; runs grokked 5 vs 6",
        "hard: on one side only",
    ]


def test_reads_a_folder_and_a_collected_archive_alike(tmp_path):
    folder = tmp_path / "reports" / "metrics"
    folder.mkdir(parents=True)
    (folder / "ops.json").write_text(json.dumps(metrics({"op=x+y": 3})))
    (folder / "toy_model.json").write_text(json.dumps({"checks": 7}))  # no conditions: left out
    archive = tmp_path / "metrics.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "reports", arcname="reports")
    assert compare_metrics.load(str(folder)) == compare_metrics.load(str(archive))
    assert set(compare_metrics.load(str(archive))) == {"ops"}
