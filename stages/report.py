"""Stage `report`: reports/index.html, every figure and metric on one offline page."""

from __future__ import annotations

from pathlib import Path

from grokpipe.io import atomic_file, stage_main
from grokpipe.report import build


@stage_main
def main() -> None:
    page = build(Path("reports"))
    with atomic_file("reports/index.html") as fh:
        fh.write(page)
    print(f"report: reports/index.html ({len(page) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
