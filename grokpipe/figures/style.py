"""Shared look of every figure: seaborn theme, headless backend, consistent saving."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

SPLIT_COLORS = {"train": "#7f7f7f", "val": "#d62728"}
SPLIT_NAMES = {"train": "train", "val": "validation"}
ACCURACY_RANGE = (0.0, 1.0)  # `mean_sd_line(clip=...)` for accuracies


def setup() -> None:
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.9)


def save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def legend(ax, **kwargs) -> None:
    """The axes' legend, or none where nothing on it is labelled: a panel whose runs never
    grokked (a short budget, a hard operation) has no labelled markers, and matplotlib would
    warn and draw an empty box."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def wrap(n: int, max_cols: int = 5) -> int:
    return min(max_cols, max(1, n))


def mean_sd_line(
    ax, data, x: str, y: str, color, label=None, band: bool = True, clip=None, log=False, **line_kw
):
    """Mean over seeds, with a ± sd band unless `band` is False: what `sns.lineplot` draws with
    errorbar="sd" (or None), but in one vectorised groupby. seaborn aggregates each x value in
    Python, which took 24 s for the 34 panels of 1 000 evaluations in the full `ops` curves.

    `clip` (lo, hi) bounds the band to the values the quantity can take (an accuracy's band
    otherwise leaves [0, 1] and stretches shared axes). `log` is for a log axis: the mean and
    sd are taken of log10(y), so the line is the geometric mean and the band ×/÷ the geometric
    sd, which stays positive (an arithmetic band below zero is cut off by a log axis and
    dives to its bottom edge, reading as a collapse)."""
    values = data[y]
    if log:
        values = np.log10(values.where(values > 0))
    g = values.groupby(data[x], sort=True).agg(["mean", "std"])
    xs, mean, sd = g.index.to_numpy(), g["mean"].to_numpy(), g["std"].to_numpy()
    lo, hi = mean - sd, mean + sd
    if log:
        mean, lo, hi = 10**mean, 10**lo, 10**hi
    if clip is not None:
        lo, hi = np.clip(lo, *clip), np.clip(hi, *clip)
    line_kw.setdefault("linewidth", 1.2)
    ax.plot(xs, mean, color=color, label=label, **line_kw)
    if band:
        ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)


def label_hidden_neighbours(axes) -> None:
    """Under `sharex`, only the bottom row shows x tick labels; where a column's bottom panels
    are hidden (a grid with empty slots), its last visible panel gets them back."""
    for col in axes.T:
        visible = [ax for ax in col if ax.get_visible()]
        if visible and visible[-1] is not col[-1]:
            visible[-1].xaxis.set_tick_params(labelbottom=True)
            visible[-1].set_xlabel(col[-1].get_xlabel())


def readable_log_axis(axis) -> None:
    """Ticks at 1, 2 and 5 of each decade with plain numbers (5,200, not 10^3.7): a log axis
    spanning less than a decade otherwise shows a single labelled tick."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


@contextmanager
def fixed_jitter(seed: int = 0):
    """seaborn's strip plots jitter with numpy's global generator: seeded here, so that a
    figure redrawn from the same runs is the same image, and restored after."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)
