"""Seed 004's figure: loss, accuracy and the mean embedding difference (MED) against the step,
one row per split (and its k), so that the embedding's smoothing can be read beside the moment
validation accuracy rises."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from grokpipe.figures.context import FigureContext
from grokpipe.figures.style import (
    ACCURACY_RANGE,
    SPLIT_COLORS,
    SPLIT_NAMES,
    legend,
    mean_sd_line,
    save,
)

MED_COLOR = "#1f77b4"


def med_curves(ctx: FigureContext) -> list:
    """Rows: conditions in the grid's order; columns: loss (log), accuracy, MED; the step on a
    log axis as in every curve figure. A vertical line marks each row's median grokking step."""
    h = ctx.history_with_labels()
    h = h[h["step"] > 0]
    if h["med"].isna().all():
        raise ValueError(
            f"{ctx.exp.name}: no run logged a mean embedding difference (the task or model has "
            "no ordered operand embedding): the med_curves figure needs one"
        )
    conditions = list(dict.fromkeys(ctx.runs["condition"]))
    fig, axes = plt.subplots(
        len(conditions), 3, figsize=(11, 2.3 * len(conditions)), squeeze=False, sharex=True
    )
    for row, cond in zip(axes, conditions):
        sub = h[h["condition"] == cond]
        for split, color in SPLIT_COLORS.items():
            name = SPLIT_NAMES[split]
            mean_sd_line(row[0], sub, "step", f"{split}_loss", color, label=name, log=True)
            mean_sd_line(
                row[1], sub, "step", f"{split}_acc", color, label=name, clip=ACCURACY_RANGE
            )
        mean_sd_line(row[2], sub, "step", "med", MED_COLOR, label="MED")
        row[0].set_yscale("log")
        row[1].set_ylim(-0.02, 1.02)
        grok = ctx.table.loc[ctx.table["condition"] == cond, "grokked_at"]
        seeds = len(grok)
        verdict = f"grokked {grok.notna().sum()}/{seeds}"
        if grok.notna().any():
            step = float(np.median(grok.dropna()))
            verdict += f", median step {step:,.0f}"
            for ax in row:
                ax.axvline(step, color="black", lw=0.8, ls=":", zorder=0)
        row[0].set_ylabel(f"{cond}\n{verdict}", fontsize=8)
        for ax in row:
            ax.set_xscale("log")
    # a fixed one-hot embedding cannot move: its MED is the first hidden layer's (mlp.py)
    one_hot = any(getattr(r.config.model, "embedding", None) == "one_hot" for r in ctx.exp.runs)
    med_title = "MED of the first hidden layer" if one_hot else "mean embedding difference"
    for ax, title in zip(axes[0], ("loss", "accuracy", med_title)):
        ax.set_title(title, fontsize=10)
    legend(axes[0][0], fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    seeds = ctx.runs.groupby("condition").size().max()
    fig.suptitle(
        f"{ctx.exp.title}\nloss, accuracy and MED vs optimisation step (mean ± sd over {seeds} "
        f"seed{'s' if seeds > 1 else ''}; dotted: median grokking step)",
        y=1.0,
        va="bottom",
        fontsize=10,
    )
    # the two-line title sits above the figure (va bottom); the panels fill it up to their
    # column titles (fixed spacing: tight_layout over log-scaled panels costs seconds)
    fig.subplots_adjust(hspace=0.25, wspace=0.22, top=1 - 0.4 / (2.3 * len(conditions)))
    return [save(fig, ctx.out_dir / "med.png")]
