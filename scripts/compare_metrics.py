"""Compare two runs of the pipeline's verdicts, condition by condition: a science check after
a change to the engine (precision, deterministic gathers, kernels).

Each side is a `reports/metrics` folder or a `metrics.tgz` collected by
`scripts/gpu_pipeline.sh collect` (as kept in `benchmarks/h100_session*/`). For every
experiment both hold, it prints the conditions whose grokked seeds differ (the verdicts) and,
where both grokked, the mean grok step of each side; then a line per experiment. Wall times
are left out: they differ by nature.

    python scripts/compare_metrics.py benchmarks/h100_session12/metrics.tgz reports/metrics
"""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path


def load(source: str) -> dict[str, dict]:
    """experiment -> its metrics file, for the experiments with per-condition metrics."""
    path = Path(source)
    files = {}
    if path.is_dir():
        for f in path.glob("*.json"):
            files[f.stem] = json.loads(f.read_text())
    else:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name.startswith("reports/metrics/") and member.name.endswith(".json"):
                    files[Path(member.name).stem] = json.load(tar.extractfile(member))
    return {name: m for name, m in files.items() if "conditions" in m}


def grok_step(condition: dict) -> float | None:
    grokked = condition.get("grokked_at") or {}
    return grokked.get("mean")


def compare(a: dict[str, dict], b: dict[str, dict]) -> list[str]:
    lines = []
    for name in sorted(set(a) & set(b)):
        ca, cb = a[name]["conditions"], b[name]["conditions"]
        same_verdicts, changed = 0, []
        for key in sorted(set(ca) & set(cb)):
            x, y = ca[key], cb[key]
            sa, sb = grok_step(x), grok_step(y)
            steps = f"{sa:.0f} vs {sb:.0f}" if sa is not None and sb is not None else ""
            if x["grokked_seeds"] == y["grokked_seeds"]:
                same_verdicts += 1
                continue
            verdict = f"{x['grokked_seeds']}/{x['seeds']} vs {y['grokked_seeds']}/{y['seeds']}"
            changed.append(f"  {name} {key}: grokked {verdict} {steps}".rstrip())
        only = set(ca) ^ set(cb)
        total_a = a[name].get("summary", {}).get("grokked_runs")
        total_b = b[name].get("summary", {}).get("grokked_runs")
        lines += changed
        lines.append(
            f"{name}: {same_verdicts}/{len(set(ca) & set(cb))} conditions with the same grokked "
            f"seeds; runs grokked {total_a} vs {total_b}"
            + (f"; {len(only)} condition(s) on one side only" if only else "")
        )
    for name in sorted(set(a) ^ set(b)):
        lines.append(f"{name}: on one side only")
    return lines


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit(__doc__)
    print("\n".join(compare(load(argv[0]), load(argv[1]))))


if __name__ == "__main__":
    main(sys.argv[1:])
