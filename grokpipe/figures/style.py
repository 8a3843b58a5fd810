"""Shared look of every figure: seaborn theme, headless backend, consistent saving."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

SPLIT_COLORS = {"train": "#7f7f7f", "val": "#d62728"}
SPLIT_NAMES = {"train": "train", "val": "validation"}


def setup() -> None:
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.9)


def save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def wrap(n: int, max_cols: int = 5) -> int:
    return min(max_cols, max(1, n))
