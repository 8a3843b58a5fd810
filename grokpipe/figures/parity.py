"""Figures for seed 003's parity experiments; every title quotes the computed verdict.

- `parity_curves`        train / validation accuracy against step, per condition (any parity
                         experiment), titled with each analysis verdict of the experiment;
- `parity_rate_limiting` steps to grok and final validation accuracy against the update period,
                         first layer slowed vs last layer slowed;
- `parity_data_size`     steps to grok and final validation accuracy against training-set size;
- `parity_init_scale`    memorised / grokked steps against the initialisation scale, with the
                         validation curves per scale;
- `parity_frozen`        learning curves with the first layer frozen (random features) vs trained,
                         one panel per depth;
- `parity_double_grokking` validation accuracy per seed with the k-parity plateau marked.
"""

from __future__ import annotations

import math
import textwrap

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from grokpipe.analysis import parity as verdicts
from grokpipe.figures.context import FigureContext
from grokpipe.figures.style import (
    ACCURACY_RANGE,
    SPLIT_COLORS,
    label_hidden_neighbours,
    legend,
    mean_sd_line,
    readable_log_axis,
    save,
)

FIRST, LAST = "#1f77b4", "#ff7f0e"


def verdict(ctx: FigureContext, kind: str) -> str:
    """The analysis' verdict from the metrics file (computed by the evaluate stage)."""
    entry = (ctx.metrics.get("analyses") or {}).get(kind)
    if entry is None:
        raise ValueError(
            f"figure needs analysis {kind!r}: list it under experiments.{ctx.exp.name}.analyses"
        )
    return entry["verdict"]


def titled(fig, ctx: FigureContext, kinds: list[str], width: int = 120) -> None:
    lines = [ctx.exp.title]
    for kind in kinds:
        lines += textwrap.wrap(verdict(ctx, kind), width)
    fig.suptitle("\n".join(lines), fontsize=9.5)


def _history(ctx: FigureContext) -> pd.DataFrame:
    h = ctx.history_with_labels()
    return h[h["step"] > 0]


def _seed_note(ctx: FigureContext) -> str:
    seeds = ctx.runs.groupby("condition").size().max()
    return f"mean ± sd over {seeds} seed{'s' if seeds > 1 else ''}"


# --- generic learning curves ---------------------------------------------------------------------


def parity_curves(ctx: FigureContext) -> list:
    h = _history(ctx)
    conditions = list(dict.fromkeys(ctx.runs["condition"]))
    cols = min(4, len(conditions))
    rows = -(-len(conditions) // cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(max(9.0, 3.6 * cols), 3.2 * rows + 0.8),
        squeeze=False,
        sharex=True,
        sharey=True,
        layout="constrained",
    )
    for ax, cond in zip(axes.flat, conditions):
        sub = h[h["condition"] == cond]
        for split, name in (("train", "train"), ("val", "validation")):
            mean_sd_line(
                ax,
                sub,
                "step",
                f"{split}_acc",
                SPLIT_COLORS[split],
                label=name if ax is axes.flat[0] else None,
                clip=ACCURACY_RANGE,
                linewidth=1.3,
            )
        m = ctx.table[ctx.table["condition"] == cond]
        grok = m["grokked_at"].dropna()
        med = verdicts.median_steps(m["grokked_at"])
        med = f", median {verdicts.fmt_steps(med)}" if len(grok) else ""
        label = cond.replace("train.layers.", "").replace(",", ", ")
        ax.set_title(f"{label}\ngrokked {len(grok)}/{len(m)} seeds{med}", fontsize=8.5)
        ax.set_xscale("log")
        ax.axhline(0.99, color="k", lw=0.5, ls=":")
        ax.set_ylabel("accuracy")
        ax.set_xlabel("")
        ax.set_ylim(0.35, 1.03)
    for ax in list(axes.flat)[len(conditions) :]:
        ax.set_visible(False)
    label_hidden_neighbours(axes)
    legend(axes.flat[0], fontsize=8, loc="best")
    fig.supxlabel(f"optimisation step (log; {_seed_note(ctx)})", fontsize=9)
    titled(fig, ctx, ctx.exp.analyses)
    return [save(fig, ctx.out_dir / "parity_curves.png")]


# --- sweeps: steps to grok against a numeric axis -----------------------------------------------


def _sweep_panels(ctx, series: dict[str, tuple[pd.DataFrame, str]], x: str, xlabel: str, logx):
    """Two panels: steps to grok (dots per seed, median line, × = never in budget) and final
    validation accuracy, against column `x` of each series' table."""
    budget = ctx.budget
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 5.0), layout="constrained")
    ceiling = budget * 1.25
    for label, (t, color) in series.items():
        t = t.assign(_x=t[x].astype(float))
        xs = sorted(t["_x"].unique())
        med = [verdicts.median_steps(t[t["_x"] == v]["grokked_at"]) for v in xs]
        fin = [(v, m) for v, m in zip(xs, med) if not math.isinf(m)]
        if fin:
            a1.plot(*zip(*fin), "-o", color=color, lw=1.8, ms=5, label=f"{label}: median")
        g = t.dropna(subset=["grokked_at"])
        # above the median lines: a seed at another series' median is otherwise hidden
        a1.scatter(g["_x"], g["grokked_at"], color=color, s=18, alpha=0.6, zorder=3)
        never = t[t["grokked_at"].isna()].groupby("_x").size()
        if len(never):
            a1.scatter(never.index, [ceiling] * len(never), marker="x", color=color, s=60)
            for v, c in never.items():
                a1.annotate(
                    f"{c} never", (v, ceiling), xytext=(6, -3), textcoords="offset points",
                    color=color, fontsize=8,
                )  # fmt: skip
        acc = t.groupby("_x")["final_val_acc"].agg(["mean", "std"]).reset_index()
        sd = acc["std"].fillna(0)
        # ± sd, cut at the accuracies that exist
        below = acc["mean"] - (acc["mean"] - sd).clip(lower=0)
        above = (acc["mean"] + sd).clip(upper=1) - acc["mean"]
        a2.errorbar(
            acc["_x"], acc["mean"], yerr=[below, above], color=color, marker="o",
            capsize=3, label=label,
        )  # fmt: skip
    a1.axhline(budget, color="k", lw=0.6, ls=":")
    a1.text(0.01, budget, f" budget {budget:,} steps; × = seeds that never grok", fontsize=8,
            va="bottom", transform=a1.get_yaxis_transform())  # fmt: skip
    a1.set_yscale("log")
    readable_log_axis(a1.yaxis)
    a1.set_ylabel("steps until validation accuracy ≥ 99%")
    a2.set_ylabel("final validation accuracy")
    a2.axhline(0.5, color="k", lw=0.5, ls=":")
    a2.set_ylim(0.4, 1.03)
    fig.supxlabel(xlabel, fontsize=10)
    for ax in (a1, a2):
        ax.set_xlabel("")
        if logx:
            ax.set_xscale("log", base=logx)
            ticks = sorted({float(v) for t, _ in series.values() for v in t[x]})
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{v:g}" for v in ticks])
            ax.minorticks_off()
        legend(ax, fontsize=8)
    return fig


def parity_rate_limiting(ctx: FigureContext) -> list:
    t = ctx.table
    fc, lc = verdicts._period_columns(t)
    pf, pl = t[fc].astype(float), t[lc].astype(float)
    base = t[(pf == 1) & (pl == 1)]
    first = pd.concat([base, t[(pf > 1) & (pl == 1)]]).assign(period=lambda d: d[fc])
    last = pd.concat([base, t[(pl > 1) & (pf == 1)]]).assign(period=lambda d: d[lc])
    fig = _sweep_panels(
        ctx,
        {"first layer slowed": (first, FIRST), "last layer slowed": (last, LAST)},
        "period",
        "update period P of the slowed layer (trains on steps divisible by P; 1 = baseline)",
        logx=2,
    )
    titled(fig, ctx, ["parity_rate_limiting"])
    return [save(fig, ctx.out_dir / "rate_limiting.png")]


def parity_data_size(ctx: FigureContext) -> list:
    t = ctx.table
    fig = _sweep_panels(
        ctx, {"MLP": (t, "#2ca02c")}, "n_train", "training examples (n_train)", logx=None
    )
    titled(fig, ctx, ["parity_data_size"])
    return [save(fig, ctx.out_dir / "data_size.png")]


def parity_init_scale(ctx: FigureContext) -> list:
    t = ctx.table.assign(scale=ctx.table["init_scale"].astype(float))
    budget = ctx.budget
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 5.0), layout="constrained")
    scales = sorted(t["scale"].unique())
    for col, label, color in (
        ("memorized_at", "memorised (train ≥ 99%)", "#7f7f7f"),
        ("grokked_at", "grokked (validation ≥ 99%)", "#d62728"),
    ):
        med = [verdicts.median_steps(t[t["scale"] == s][col]) for s in scales]
        fin = [(s, m) for s, m in zip(scales, med) if not math.isinf(m)]
        if fin:
            a1.plot(*zip(*fin), "-o", color=color, label=f"{label}, median")
        g = t.dropna(subset=[col])
        a1.scatter(g["scale"], g[col], color=color, s=16, alpha=0.5, zorder=3)
        never = t[t[col].isna()].groupby("scale").size()
        if len(never):
            a1.scatter(never.index, [budget * 1.25] * len(never), marker="x", color=color, s=60)
    a1.axhline(budget, color="k", lw=0.6, ls=":")
    a1.set_xscale("log")
    a1.set_yscale("log")
    readable_log_axis(a1.yaxis)
    a1.set_xticks(scales)
    a1.set_xticklabels([f"{s:g}" for s in scales])
    a1.minorticks_off()
    a1.set_xlabel("initialisation scale (× Xavier)")
    a1.set_ylabel("steps to memorise / to grok (× = never)")
    legend(a1, fontsize=8)
    h = _history(ctx)
    h = h.assign(scale=h["init_scale"].astype(float))
    palette = dict(zip(scales, sns.color_palette("viridis", len(scales))))
    for s in scales:
        sub = h[h["scale"] == s]
        mean_sd_line(
            a2, sub, "step", "val_acc", palette[s], label=f"×{s:g} validation", clip=ACCURACY_RANGE
        )
        mean_sd_line(
            a2, sub, "step", "train_acc", palette[s], band=False, linestyle="--", linewidth=0.9
        )
    a2.set_xscale("log")
    a2.set_ylim(0.35, 1.03)
    a2.set_ylabel(f"accuracy (dashed: train; {_seed_note(ctx)})")
    a2.set_xlabel("optimisation step (log)")
    legend(a2, fontsize=8)
    titled(fig, ctx, ["parity_init_scale"])
    return [save(fig, ctx.out_dir / "init_scale.png")]


def parity_frozen(ctx: FigureContext) -> list:
    h = _history(ctx)
    fcol = verdicts._column(h, "frozen", "train.layers.first.frozen")
    h = h.assign(frozen=h[fcol].map(verdicts._as_bool))
    if "hidden" in h.columns:
        h = h.assign(depth=h["hidden"].map(verdicts._depth))
    else:
        depth = {r.run_id: len(r.config.model.hidden) for r in ctx.exp.runs}
        h = h.assign(depth=h["run_id"].map(depth))
    depths = sorted(h["depth"].unique())
    fig, axes = plt.subplots(
        1, len(depths), figsize=(max(9.0, 5.5 * len(depths)), 4.8), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    colors = {False: "#2ca02c", True: "#9467bd"}
    names = {False: "trained first layer", True: "frozen first layer (random features)"}
    for ax, d in zip(axes.flat, depths):
        for fz in (False, True):
            sub = h[(h["depth"] == d) & (h["frozen"] == fz)]
            if sub.empty:
                continue
            mean_sd_line(ax, sub, "step", "val_acc", colors[fz], label=f"{names[fz]}: validation",
                         clip=ACCURACY_RANGE)  # fmt: skip
            mean_sd_line(ax, sub, "step", "train_acc", colors[fz], label=f"{names[fz]}: train",
                         band=False, linestyle="--", linewidth=0.9)  # fmt: skip
        ax.set_xscale("log")
        ax.set_ylim(0.35, 1.03)
        ax.set_title(f"{d} hidden layer{'s' if d > 1 else ''}", fontsize=10)
        ax.set_xlabel("optimisation step (log)")
        ax.set_ylabel(f"accuracy ({_seed_note(ctx)})")
        legend(ax, fontsize=7.5, loc="upper left")
    titled(fig, ctx, ["parity_frozen_first_layer"], width=110)
    return [save(fig, ctx.out_dir / "frozen_first_layer.png")]


def parity_double_grokking(ctx: FigureContext) -> list:
    entry = ctx.metrics["analyses"]["parity_double_grokking"]
    h = _history(ctx)
    fig, ax = plt.subplots(figsize=(9.5, 5.2), layout="constrained")
    seeds = list(dict.fromkeys(h["run_id"]))
    palette = dict(zip(seeds, sns.color_palette("tab10", len(seeds))))
    for run_id in seeds:
        g = h[h["run_id"] == run_id]
        seed = int(g["seed"].iloc[0])
        ax.plot(g["step"], g["val_acc"], color=palette[run_id], lw=1.4, label=f"seed {seed}")
        ax.plot(g["step"], g["train_acc"], color=palette[run_id], lw=0.8, ls="--", alpha=0.6)
        r = entry["per_run"].get(run_id, {})
        for key, marker in (("stage1_step", "o"), ("stage2_step", "*")):
            s = r.get(key)
            if s is not None:
                y = float(g.loc[g["step"] == s, "val_acc"].iloc[0])
                ax.scatter([s], [y], color=palette[run_id], marker=marker, s=70, zorder=5)
    ax.axhline(entry["plateau_expected"], color="k", lw=0.8, ls=":")
    ax.text(
        0.01, entry["plateau_expected"],
        f" k-parity plateau 1 − 2^−(m+1) = {entry['plateau_expected']:.3f}",
        transform=ax.get_yaxis_transform(), va="bottom", fontsize=8,
    )  # fmt: skip
    ax.set_xscale("log")
    ax.set_ylim(0.35, 1.03)
    ax.set_xlabel("optimisation step (log); ● plateau reached, ★ peek rule learned")
    ax.set_ylabel("accuracy (solid: validation, dashed: train)")
    legend(ax, fontsize=8, loc="lower right")
    titled(fig, ctx, ["parity_double_grokking"], width=100)
    return [save(fig, ctx.out_dir / "double_grokking.png")]
