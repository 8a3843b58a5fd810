"""Figures of the pattern toy model (seed 000): the paper's four panels, the seed's slider as a
grid of small panels, and toy-model fits overlaid on measured training runs."""

from __future__ import annotations

from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from grokpipe.analysis.toyfit import ROLES, patterns_from
from grokpipe.analysis.toymodel import Pattern, accuracies
from grokpipe.figures.style import SPLIT_COLORS, legend

PATTERN_COLORS = sns.color_palette("colorblind", 8)
REGIME_TINT = {  # panel background in the slider grid, one per regime label
    "double descent": "#e8f0fb",
    "grokking": "#fdecea",
    "double descent + grokking": "#f3e8fb",
    "memorise only": "#f2f2f2",
    "plain": "#ffffff",
}


def _pattern_label(i: int, p: Pattern) -> str:
    return f"Type {i + 1}: {p.name}" if p.name else f"Type {i + 1}"


def _patterns_panel(ax, patterns: list[Pattern], t: np.ndarray, title: str, with_legend: bool):
    for i, p in enumerate(patterns):
        style = "-" if p.gamma > 0 else ":"  # an absent pattern (γ = 0) drawn dotted
        ax.plot(
            t,
            p.predictiveness(t),
            style,
            color=PATTERN_COLORS[i],
            lw=1.8,
            label=_pattern_label(i, p) + (" (preferred)" if p.preferred else ""),
        )
    ax.set(title=title, xlabel="epoch", ylabel="predictiveness", ylim=(-0.03, 1.03))
    if with_legend:
        legend(ax, loc="center right", fontsize=8)


def _accuracy_panel(ax, patterns: list[Pattern], t: np.ndarray, title: str, lw: float = 1.8):
    train, test = accuracies(patterns, t)
    ax.plot(t, train, color=SPLIT_COLORS["train"], lw=lw, label="train")
    ax.plot(t, test, color=SPLIT_COLORS["val"], lw=lw, label="test")
    ax.set(title=title, ylim=(-0.03, 1.03))


def paper_figure(dd: list[Pattern], grok: list[Pattern], epochs: int, described: dict):
    """Davies et al.'s toy-model figure: double-descent patterns and accuracy, then grokking.

    `described` is `toyshape.paper_checks(...)`; its milestones are marked on the curves.
    """
    t = np.linspace(0, epochs - 1, 4 * epochs)
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.9))
    _patterns_panel(axes[0], dd, t, "Double descent: patterns", with_legend=True)
    _accuracy_panel(axes[1], dd, t, "Double descent: accuracy")
    _patterns_panel(axes[2], grok, t, "Grokking: patterns", with_legend=False)
    _accuracy_panel(axes[3], grok, t, "Grokking: accuracy")

    d = described["double_descent"]["test"]
    if d["peak_t"] is not None:
        axes[1].plot([d["peak_t"], d["dip_t"]], [d["peak"], d["dip"]], "o", color="black", ms=4)
        axes[1].annotate(
            f"peak {d['peak']:.2f}\nt={d['peak_t']:.0f}",
            (d["peak_t"], d["peak"]),
            xytext=(6, 6),
            textcoords="offset points",
            fontsize=8,
        )
        axes[1].annotate(
            f"dip {d['dip']:.2f}\nt={d['dip_t']:.0f}",
            (d["dip_t"], d["dip"]),
            xytext=(6, -22),
            textcoords="offset points",
            fontsize=8,
        )
    g = described["grokking"]
    for key, text, color in (
        ("memorised_at", "train ≥ 0.99", SPLIT_COLORS["train"]),
        ("test_half_at", "test = 0.5", SPLIT_COLORS["val"]),
    ):
        at = g[key]["t"]
        if at is not None:
            axes[3].axvline(at, color=color, ls="--", lw=0.9)
            axes[3].text(
                at + 3,
                0.06 if key == "memorised_at" else 0.16,
                f"{text}\nt={at:.0f}",
                fontsize=8,
                color=color,
            )
    for ax, corner in ((axes[1], "lower right"), (axes[3], "upper left")):  # empty corners
        ax.set(xlabel="epoch", ylabel="accuracy")
        legend(ax, loc=corner, fontsize=8)
    fig.suptitle(
        "Pattern toy model (Davies et al. 2022): fast heuristics give double descent; "
        "without them, a slow preferred pattern gives grokking",
        y=1.02,
    )
    fig.tight_layout()
    return fig


def slider_grid(
    base: list[Pattern],
    heuristic_index: int,
    slow_index: int,
    heuristic_gamma: list[float],
    slow_gamma: list[float],
    epochs: int,
    regimes: dict,
):
    """The seed's two sliders as a grid: rows vary the heuristic's γ, columns the slow
    preferred pattern's γ; each small panel shows train and test accuracy, tinted by regime.

    `regimes[(h, s)]` is the regime label `toyshape.describe` gave that cell.
    """
    t = np.linspace(0, epochs - 1, 2 * epochs)
    rows, cols = len(heuristic_gamma), len(slow_gamma)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(2.3 * cols + 0.6, 1.9 * rows + 0.8),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    for r, h in enumerate(heuristic_gamma):
        for c, s in enumerate(slow_gamma):
            ax = axes[r, c]
            patterns = list(base)
            patterns[heuristic_index] = replace(base[heuristic_index], gamma=h)
            patterns[slow_index] = replace(base[slow_index], gamma=s)
            _accuracy_panel(ax, patterns, t, "", lw=1.3)
            regime = regimes[(h, s)]
            ax.set_facecolor(REGIME_TINT.get(regime, "white"))
            ax.text(0.97, 0.05, regime, transform=ax.transAxes, ha="right", fontsize=7)
            ax.set_xticks([0, epochs // 2, epochs])
            if r == 0:
                ax.set_title(f"slow γ₃ = {s:g}", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"heuristic γ₁ = {h:g}\naccuracy", fontsize=9)
            if r == rows - 1:
                ax.set_xlabel("epoch", fontsize=9)
    legend(axes[0, 0], loc="upper left", fontsize=7)
    fig.suptitle(
        "Double descent ↔ grokking: weaker heuristics (down) and a stronger slow preferred "
        "pattern (right)",
        y=1.0,
    )
    fig.tight_layout()
    return fig


def select_runs(records: list[dict], limit: int) -> list[dict]:
    """At most `limit` runs, taken round-robin over conditions so that each is represented."""
    if len(records) <= limit:
        return list(records)
    by_cond: dict[str, list[dict]] = {}
    for r in records:
        by_cond.setdefault(str(r.get("condition", "all")), []).append(r)
    chosen, depth = [], 0
    while len(chosen) < min(limit, len(records)):
        for runs in by_cond.values():
            if depth < len(runs) and len(chosen) < limit:
                chosen.append(runs[depth])
        depth += 1
    return chosen


def _fit_title(r: dict) -> str:
    head = f"{r['run_id']}  {r.get('condition', '')}  seed {r.get('seed', '?')}"
    f = r["fit"]
    if f["status"] != "fitted":
        return f"{head}\nnot fitted: {f['reason']}"
    model = "H+M+G" if f["model"].startswith("heuristic") else "M+G"
    rmse = ", ".join(
        f"{split} {f[f'rmse_{split}']:.3f}"
        for split in ("train", "val")
        if f[f"rmse_{split}"] is not None
    )
    return f"{head}\n{model}: RMSE {rmse}"


def fit_figure(records: list[dict], history: pd.DataFrame, title: str, limit: int):
    """Measured train/validation accuracy (dots) against the fitted toy model (lines), with the
    fitted patterns' predictiveness faint and dashed, one panel per run, log step axis."""
    shown = select_runs(records, limit)
    cols = min(4, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.0 * cols, 3.1 * rows), squeeze=False, sharey=True
    )
    by_run = {rid: h.sort_values("step") for rid, h in history.groupby("run_id", sort=False)}
    for ax, r in zip(axes.flat, shown):
        h = by_run.get(r["run_id"])
        if h is None:
            ax.set_title(_fit_title(r), fontsize=8)
            continue
        steps = h["step"].to_numpy(float)
        x = steps + 1  # the fit's time axis is log10(step + 1)
        for split in ("train", "val"):
            ax.plot(
                x,
                h[f"{split}_acc"],
                "o",
                ms=2.2,
                alpha=0.55,
                color=SPLIT_COLORS[split],
                label=f"{split} (measured)",
            )
        f = r["fit"]
        if f["status"] == "fitted":
            heuristic = f["model"].startswith("heuristic")
            grid = np.logspace(0, np.log10(x.max()), 300)
            fitted = patterns_from(np.array(f["theta"]), heuristic)
            train, val = accuracies(fitted, np.log10(grid))
            ax.plot(grid, train, color=SPLIT_COLORS["train"], lw=1.6, label="train (toy fit)")
            ax.plot(grid, val, color=SPLIT_COLORS["val"], lw=1.6, label="val (toy fit)")
            for p in fitted:
                i = ROLES.index(p.name)
                ax.plot(
                    grid,
                    p.predictiveness(np.log10(grid)),
                    "--",
                    lw=0.9,
                    alpha=0.6,
                    zorder=1,
                    color=PATTERN_COLORS[i],
                    label=f"{p.name} pattern",
                )
        ax.set_xscale("log")
        ax.set(ylim=(-0.03, 1.05), xlabel="step + 1", ylabel="accuracy")
        ax.set_title(_fit_title(r), fontsize=8)
    for ax in list(axes.flat)[len(shown) :]:
        ax.set_visible(False)
    handles = {}
    for ax in axes.flat:
        for hdl, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, hdl)
    fig.legend(
        handles.values(),
        handles.keys(),
        loc="lower center",
        ncol=7,
        fontsize=8,
        bbox_to_anchor=(0.5, -0.04),
    )
    note = "" if len(shown) == len(records) else f" ({len(shown)} of {len(records)} runs shown)"
    fig.suptitle(f"{title}: toy-model fits to measured accuracy{note}", y=1.0)
    # fixed spacing: tight_layout over many log-scaled panels costs seconds per figure
    fig.subplots_adjust(left=0.06, right=0.98, top=0.9, bottom=0.1, hspace=0.75, wspace=0.08)
    return fig
