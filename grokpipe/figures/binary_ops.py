"""Figures for grokking experiments: learning curves, steps-to-grok, the training-fraction
sweep (Power et al. Fig. 1 centre), seed 002's value counts, and validation accuracy after
grokking."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from grokpipe.figures.context import FigureContext
from grokpipe.figures.style import (
    ACCURACY_RANGE,
    SPLIT_COLORS,
    SPLIT_NAMES,
    fixed_jitter,
    label_hidden_neighbours,
    legend,
    mean_sd_line,
    readable_log_axis,
    save,
    wrap,
)


def _long(ctx: FigureContext, metric: str) -> pd.DataFrame:
    """history reshaped to one row per (run, step, split), step 0 dropped for log axes."""
    h = ctx.history_with_labels()
    h = h[h["step"] > 0]
    parts = []
    for split in ("train", "val"):
        part = h[["run_id", "condition", "seed", "step", "stopped"]].copy()
        part["split"] = SPLIT_NAMES[split]
        part[metric] = h[f"{split}_{metric}"].to_numpy()
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _curves(ctx: FigureContext, metric: str, ylabel: str, logy: bool):
    data = _long(ctx, metric)
    held = bool(data["stopped"].any())
    conditions = list(dict.fromkeys(ctx.runs["condition"]))
    cols = wrap(len(conditions))
    rows = -(-len(conditions) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False, sharex=True, sharey=True
    )
    palette = {SPLIT_NAMES[k]: v for k, v in SPLIT_COLORS.items()}
    for ax, cond in zip(axes.flat, conditions):
        sub = data[data["condition"] == cond]
        for split, color in palette.items():
            part = sub[sub["split"] == split]
            bounds = ACCURACY_RANGE if metric == "acc" else None
            mean_sd_line(ax, part, "step", metric, color, label=split, clip=bounds, log=logy)
        if ax is axes.flat[0]:
            legend(ax, title="split", fontsize=8)
        ax.set_xlabel("step" if ax in axes[-1, :] else "")
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        m = ctx.table[ctx.table["condition"] == cond]
        grokked = m["grokked_at"].notna().sum()
        ax.set_title(f"{cond}\ngrokked {grokked}/{len(m)} seeds", fontsize=9)
        ax.set_ylabel(ylabel if ax in axes[:, 0] else "")
    for ax in list(axes.flat)[len(conditions) :]:
        ax.set_visible(False)
    label_hidden_neighbours(axes)
    seeds = ctx.runs.groupby("condition").size().max()
    spread = "geometric mean ×/÷ sd" if logy else "mean ± sd"
    fig.suptitle(
        f"{ctx.exp.title}: {ylabel.lower()} vs optimisation step "
        f"({spread} over {seeds} seed{'s' if seeds > 1 else ''})"
        + ("\nruns that stopped at 99 % validation hold their last evaluation" if held else ""),
        y=1.0,
        va="bottom" if held else "top",  # a second line grows up, clear of the panels
    )
    # fixed spacing: tight_layout over many log-scaled panels costs seconds per figure
    fig.subplots_adjust(hspace=0.55 if rows > 1 else 0.3, wspace=0.08, top=1 - 0.55 / (2.8 * rows))
    return fig


def curves(ctx: FigureContext) -> list:
    # evaluation scores the answer token only, also for runs trained on every next token
    # (seed 002's seq2seq), so that the two losses are compared on the same quantity
    seq = any(r.config.train.loss_on == "sequence" for r in ctx.exp.runs)
    loss = "Answer-token loss" if seq else "Loss"
    return [
        save(_curves(ctx, "acc", "Accuracy", logy=False), ctx.out_dir / "accuracy.png"),
        save(_curves(ctx, "loss", loss, logy=True), ctx.out_dir / "loss.png"),
    ]


def grok_steps(ctx: FigureContext) -> list:
    """Memorised-at and grokked-at per condition, each seed a dot, never-grokked marked."""
    t = ctx.table
    conditions = list(dict.fromkeys(t["condition"]))
    long = pd.concat(
        [
            t.assign(event="memorised (train ≥ 99%)", step=t["memorized_at"]),
            t.assign(event="grokked (validation ≥ 99%)", step=t["grokked_at"]),
        ]
    )
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(conditions) + 1.6))
    with fixed_jitter():  # seeds at the same step (evaluations are every 100) stay apart
        sns.stripplot(
            long.dropna(subset=["step"]),
            x="step",
            y="condition",
            hue="event",
            order=conditions,
            dodge=True,
            jitter=0.12,
            size=6,
            alpha=0.8,
            ax=ax,
            palette={
                "memorised (train ≥ 99%)": "#7f7f7f",
                "grokked (validation ≥ 99%)": "#d62728",
            },
        )
    ax.set_xscale("log")
    readable_log_axis(ax.xaxis)
    ax.set_xlim(right=ctx.budget * 1.5)
    for i, cond in enumerate(conditions):
        g = t[t["condition"] == cond]
        # a run that never fit its training set did not fail to generalise: it failed first
        notes = [
            f"{n}/{len(g)} never {event}"
            for n, event in (
                (g["memorized_at"].isna().sum(), "memorised"),
                (g["grokked_at"].isna().sum(), "grokked"),
            )
            if n
        ]
        if notes:
            ax.annotate(
                f"{', '.join(notes)} in {ctx.budget:,} steps",
                xy=(1.0, i),
                xycoords=("axes fraction", "data"),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
                color="#d62728",
            )
    ax.set_xlabel("optimisation step (log)")
    ax.set_ylabel("")
    ax.set_title(f"{ctx.exp.title}: steps to memorise and to grok")
    legend(ax, loc="lower left", fontsize=8, frameon=True)
    return [save(fig, ctx.out_dir / "grok_steps.png")]


def fraction_sweep(ctx: FigureContext) -> list:
    """Steps to 99 % validation accuracy vs training fraction, per operation."""
    t = ctx.table
    if "train_fraction" not in t or "op" not in t:
        raise ValueError("fraction_sweep needs grid axes data.op and data.train_fraction")
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ops = list(dict.fromkeys(t["op"]))
    palette = dict(zip(ops, sns.color_palette("tab10", len(ops))))
    grokked = t.dropna(subset=["grokked_at"])
    if not grokked.empty:  # else every point is a × on the budget line, drawn below
        sns.lineplot(
            grokked,
            x="train_fraction",
            y="grokked_at",
            hue="op",
            hue_order=ops,
            palette=palette,
            marker="o",
            errorbar="sd",
            ax=ax,
        )
    ceiling = ctx.budget
    lines = []
    for i, op in enumerate(ops):
        g = t[t["op"] == op]
        by_frac = g.groupby("train_fraction")["grokked_at"].apply(lambda s: s.notna().any())
        failed = by_frac[~by_frac].index
        # the line plot's legend names every op; without one, the crosses name them
        label = op if grokked.empty else None
        # each op's crosses a little above the last one's, so that ops failing at the same
        # fraction all show
        y = ceiling * 1.06**i
        ax.scatter(failed, [y] * len(failed), marker="x", color=palette[op], s=40, label=label)
        # fractions where only some seeds grokked: their mean is over the survivors, which
        # flatters the steep end of the curve, so they are drawn open and labelled k/n
        counts = g.groupby("train_fraction")["grokked_at"].agg(["count", "size", "mean"])
        partial = counts[(counts["count"] > 0) & (counts["count"] < counts["size"])]
        ax.scatter(
            partial.index, partial["mean"], s=60, facecolors="white", edgecolors=palette[op],
            linewidths=1.5, zorder=5,
        )  # fmt: skip
        for frac, row in partial.iterrows():
            ax.annotate(
                f"{int(row['count'])}/{int(row['size'])}", (frac, row["mean"]),
                xytext=(5, 4), textcoords="offset points", fontsize=7, color=palette[op],
            )  # fmt: skip
        if not by_frac.any():
            lines.append(f"{op}: no seed groks at any fraction")
        elif not by_frac.iloc[0]:
            # the threshold lies between the highest fraction tried below the first that
            # grokked and that one: say both, not a sharper line than the grid measured
            lowest = by_frac[by_frac].index.min()
            below = by_frac[by_frac.index < lowest].index.max()
            lines.append(f"{op}: no seed groks at ≤ {below:g}; first grokking at {lowest:g}")
            ax.axvspan(below, lowest, color=palette[op], alpha=0.06, lw=0)
    ax.axhline(ceiling, color="k", lw=0.6, ls=":")
    ax.text(
        0.99,
        ceiling * 1.06 ** len(ops),  # above every op's row of crosses
        f"budget {ceiling:,} steps (× = no seed grokked)",
        transform=ax.get_yaxis_transform(),
        ha="right",
        va="bottom",
        fontsize=8,
    )
    ax.set_yscale("log")
    readable_log_axis(ax.yaxis)
    ax.set_xlabel("training data fraction")
    ax.set_ylabel("steps until validation accuracy ≥ 99%")
    ax.set_title(
        f"{ctx.exp.title}\n(mean ± sd over seeds that grokked; open: only k/n seeds grokked)"
    )
    if lines:
        ax.text(1.02, 0.0, "\n".join(lines), transform=ax.transAxes, fontsize=8, va="bottom")
    legend(ax, title="operation", bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8)
    return [save(fig, ctx.out_dir / "fraction_sweep.png")]


def value_counts(ctx: FigureContext) -> list:
    """Seed 002: per operation, the histogram of result values and the table's symmetry
    (share of pairs with a∘b = b∘a), against how fast the operation groks."""
    from grokpipe.tasks import store  # torch, for the datasets file: only this figure needs it
    from grokpipe.tasks.arithmetic_task import symmetry_score

    datasets, _, manifest = store.read(ctx.datasets_dir, ctx.exp)
    t = ctx.table.merge(pd.DataFrame(manifest)[["run_id", "dataset"]], on="run_id")
    rows, hists = [], {}
    for key, g in t.groupby("dataset", sort=False):
        data = datasets[key]
        c = data.extras["c"]
        values, counts = np.unique(c, return_counts=True)
        hists[key] = (values, counts)
        grok = g["grokked_at"]
        rows.append(
            {
                "dataset": key,
                "symmetry": symmetry_score(data),
                "distinct_values": len(values),
                "grokked_seeds": int(grok.notna().sum()),
                "seeds": len(g),
                "grokked_at": grok.mean() if grok.notna().any() else None,
            }
        )
    summary = pd.DataFrame(rows)
    summary.to_csv(ctx.out_dir / "value_counts.tsv", sep="\t", index=False)
    n = len(hists)
    cols = wrap(n, 4)
    r = -(-n // cols)
    fig, axes = plt.subplots(r, cols, figsize=(3.2 * cols, 2.3 * r), squeeze=False)
    for ax, (key, (values, counts)) in zip(axes.flat, hists.items()):
        ax.bar(values, counts, width=1.0, color="#4c72b0")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("result value", fontsize=8)
        ax.set_ylabel("pairs (a, b)" if ax in axes[:, 0] else "", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(f"{ctx.exp.title}: distribution of result values per operation", y=1.0)
    fig.tight_layout()
    out = [save(fig, ctx.out_dir / "value_counts.png")]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    plotted = summary.assign(
        steps=summary["grokked_at"].fillna(ctx.budget),
        outcome=np.where(summary["grokked_at"].notna(), "grokked (mean step)", "never grokked"),
    )
    sns.scatterplot(
        plotted,
        x="symmetry",
        y="steps",
        style="outcome",
        hue="outcome",
        s=70,
        ax=ax,
        palette={"grokked (mean step)": "#4c72b0", "never grokked": "#d62728"},
    )
    for _, row in plotted.iterrows():
        k, n = row["grokked_seeds"], row["seeds"]
        partial = 0 < k < n  # its mean step is over the seeds that grokked
        ax.annotate(
            f"{row['dataset']} ({k}/{n} grokked)" if partial else row["dataset"],
            (row["symmetry"], row["steps"]),
            fontsize=7,
            xytext=(4, 2),
            textcoords="offset points",
        )
    if (summary["grokked_at"].isna()).any():
        ax.axhline(ctx.budget, color="k", lw=0.6, ls=":")
        # under the line, mid-axis: the points' names sit above and right of them
        ax.text(0.5, ctx.budget, f"never grokked: plotted at the budget, {ctx.budget:,} steps",
                transform=ax.get_yaxis_transform(), ha="center", va="top", fontsize=8,
                color="#555555")  # fmt: skip
    ax.set_yscale("log")
    readable_log_axis(ax.yaxis)
    ax.set_xlim(-0.02, 1.02)  # the whole range: two tables at 0.02 are not far apart
    ax.set_xlabel("symmetry score: share of pairs with a∘b = b∘a")
    ax.set_ylabel("steps until validation accuracy ≥ 99%")
    ax.set_title(f"{ctx.exp.title}: table symmetry vs speed of grokking")
    out.append(save(fig, ctx.out_dir / "symmetry_vs_grok.png"))
    return out


def post_grok_drops(ctx: FigureContext) -> list:
    """Validation accuracy after grokking: how often each run falls back below 90 % (and
    recovers), and the raw traces of the runs that fall most, unaveraged so that no fall is
    smoothed away by the mean over seeds."""
    from grokpipe.analysis.grokking import DROP_BELOW

    t = ctx.table[ctx.table["grokked_at"].notna()]
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12, 0.4 * max(len(set(t["condition"])), 4) + 2), width_ratios=[1, 1.3]
    )
    if t.empty:
        for ax in (left, right):
            ax.text(0.5, 0.5, "no run grokked", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
    else:
        conditions = list(dict.fromkeys(t["condition"]))
        with fixed_jitter():  # seeds with the same count of falls stay apart
            sns.stripplot(
                t, x="post_grok_drops", y="condition", order=conditions, jitter=0.2, size=6,
                color="#d62728", alpha=0.8, ax=left,
            )  # fmt: skip
        left.xaxis.set_major_locator(MaxNLocator(integer=True))  # counts
        left.set_xlim(left=-0.5)
        for i, cond in enumerate(conditions):
            low = t.loc[t["condition"] == cond, "post_grok_min_val_acc"].min()
            if pd.notna(low):
                left.annotate(
                    f"lowest {low:.2f}", xy=(1.0, i), xycoords=("axes fraction", "data"),
                    xytext=(4, 0), textcoords="offset points", va="center", fontsize=8,
                )  # fmt: skip
        left.set_xlabel(f"falls below {DROP_BELOW:.0%} validation accuracy after grokking")
        left.set_ylabel("")
        left.set_title("runs that grokked, one dot per seed", fontsize=10)
        # ties broken by the deepest fall, the run whose "lowest" the left panel names
        by_falls = t.sort_values(
            ["post_grok_drops", "post_grok_min_val_acc"], ascending=[False, True]
        )
        worst = by_falls.drop_duplicates("condition").head(3)
        h = ctx.history
        for _, run in worst.iterrows():
            trace = h[h["run_id"] == run["run_id"]].sort_values("step")
            label = f"{run['condition']}, seed {run['seed']}"
            right.plot(trace["step"], trace["val_acc"], lw=0.8, label=label)
        right.axhline(DROP_BELOW, color="#7f7f7f", lw=0.8, ls=":")
        right.text(0.01, DROP_BELOW, f" {DROP_BELOW:.0%}: a fall counts below this",
                   transform=right.get_yaxis_transform(), va="bottom", fontsize=8)  # fmt: skip
        right.set_xlabel("optimisation step")
        right.set_ylabel("validation accuracy")
        right.set_title(
            "the run that falls most often, in each of the three conditions where runs fall "
            "most\n(raw, not averaged over seeds)",
            fontsize=10,
        )
        legend(right, fontsize=8, loc="lower right")
    fig.suptitle(f"{ctx.exp.title}: validation accuracy after grokking")
    fig.tight_layout()
    return [save(fig, ctx.out_dir / "post_grok_drops.png")]
