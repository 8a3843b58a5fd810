"""Verdicts for seed 003's parity experiments (tiny-gen), computed from the run table.

Each function takes the experiment and its per-run table (`grokking.per_run`) and returns a
JSON-able dict whose "verdict" is one line built from the numbers, never written by hand. A run
"groks" when validation accuracy reaches 99 % within the step budget; runs that never do count
as +∞ steps, so a median over seeds is finite only when most seeds grokked.

Every analysis also receives the runs' learning curves (`history`); the double-grokking
verdict is the one that needs them.
"""

from __future__ import annotations

import ast
import itertools
import math

import numpy as np
import pandas as pd

from grokpipe.analysis import register

# --- shared helpers ---------------------------------------------------------------------------


def _num(v) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def steps_or_inf(values) -> np.ndarray:
    """Grok steps with never-grokked runs as +∞."""
    return np.array([math.inf if _num(v) is None else float(v) for v in values], dtype=float)


def median_steps(values) -> float:
    """Median over seeds, never-grokked runs counting as +∞ (∞ when half or more never grok)."""
    arr = np.sort(steps_or_inf(values))
    if len(arr) == 0:
        return math.inf
    mid = len(arr) // 2
    if len(arr) % 2:
        return float(arr[mid])
    lo, hi = arr[mid - 1], arr[mid]
    return math.inf if math.isinf(hi) else float((lo + hi) / 2)


def fmt_steps(v: float | None) -> str:
    if v is None or math.isinf(v):
        return "never"
    return f"{int(round(v)):,}"


def fmt_ratio(v: float | None) -> str:
    """A slowdown: "n/a" where it is undefined (a baseline that never groks)."""
    if v is None:
        return "n/a"
    return "∞" if math.isinf(v) else f"{v:.1f}×"


def _ratio(med: float, base_med: float) -> float | None:
    """med / base_med (∞ when only `med` is never); None when the baseline never groks."""
    return None if math.isinf(base_med) else med / base_med


def group_stats(g: pd.DataFrame) -> dict:
    """Seed statistics of one condition."""
    grok = steps_or_inf(g["grokked_at"])
    mem = steps_or_inf(g["memorized_at"])
    delays = [g - m for g, m in zip(grok, mem) if np.isfinite(g) and np.isfinite(m)]
    return {
        "seeds": len(g),
        "grokked": int(np.isfinite(grok).sum()),
        "memorized": int(np.isfinite(mem).sum()),
        "median_grokked_at": _finite(median_steps(g["grokked_at"])),
        "median_memorized_at": _finite(median_steps(g["memorized_at"])),
        "median_delay": float(np.median(delays)) if delays else None,
        "mean_final_val_acc": float(g["final_val_acc"].mean()),
        "mean_final_train_acc": float(g["final_train_acc"].mean()),
    }


def _finite(v: float) -> float | None:
    return None if math.isinf(v) else float(v)


def _count(s: dict) -> str:
    return f"{s['grokked']}/{s['seeds']}"


def _describe(s: dict, with_val: bool = False) -> str:
    out = f"{_count(s)} grok"
    if s["median_grokked_at"] is not None:
        out += f", median step {fmt_steps(s['median_grokked_at'])}"
    if with_val:
        out += f" (final train {s['mean_final_train_acc']:.2f}, val {s['mean_final_val_acc']:.2f})"
    elif s["grokked"] < s["seeds"]:
        out += f" (final val {s['mean_final_val_acc']:.2f})"
    return out


def _budget(exp) -> int:
    return max(r.config.train.steps for r in exp.runs)


def _column(table: pd.DataFrame, *candidates: str) -> str:
    for c in candidates:
        if c in table.columns:
            return c
    raise ValueError(f"the run table has none of the grid axes {candidates}")


def _as_bool(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    return bool(v)


def _depth(v) -> int:
    """Number of hidden layers from a `model.hidden` label ([200, 200] or its string)."""
    if isinstance(v, str):
        v = ast.literal_eval(v)
    return len(v) if isinstance(v, (list, tuple)) else 1


# --- plain grokking -----------------------------------------------------------------------------


@register("parity_grokking")
def parity_grokking(exp, table: pd.DataFrame, history: pd.DataFrame) -> dict:
    """Did the plain n → h → 1 MLP grok: memorise first, generalise much later?

    A seed shows grokking when it memorises and its validation accuracy reaches 99 % no
    earlier than twice its memorisation step (generalisation clearly lags memorisation).
    """
    s = group_stats(table)
    grok = steps_or_inf(table["grokked_at"])
    mem = steps_or_inf(table["memorized_at"])
    delayed = int(sum(np.isfinite(g) and np.isfinite(m) and g >= 2 * m for g, m in zip(grok, mem)))
    verdict = (
        f"{'grokking' if delayed * 2 > len(table) else 'no grokking'}: "
        f"{s['memorized']}/{s['seeds']} seeds memorise (median step "
        f"{fmt_steps(s['median_memorized_at'])}), {_count(s)} reach 99% validation (median step "
        f"{fmt_steps(s['median_grokked_at'])}, median delay {fmt_steps(s['median_delay'])}); "
        f"{delayed}/{len(table)} generalise at ≥ 2× their memorisation step "
        f"(budget {_budget(exp):,} steps)"
    )
    return {"verdict": verdict, "delayed_seeds": delayed, **s}


# --- data-size sensitivity ----------------------------------------------------------------------


@register("parity_data_size")
def parity_data_size(exp, table: pd.DataFrame, history: pd.DataFrame) -> dict:
    """Steps to grok and share of seeds that grok, per training-set size."""
    col = _column(table, "n_train")
    per = {}
    for size, g in sorted(table.groupby(col), key=lambda kv: float(kv[0])):
        per[int(size)] = group_stats(g)
    sizes = list(per)
    every = [per[n]["grokked"] == per[n]["seeds"] for n in sizes]
    parts = [f"n={n}: {_describe(per[n])}" for n in sizes]
    # the smallest size from which every larger size also groks in every seed
    threshold = next((n for i, n in enumerate(sizes) if all(every[i:])), None)
    if threshold is not None:
        head = f"every seed groks from n_train = {threshold}"
    elif any(every):
        full = ", ".join(str(n) for n, e in zip(sizes, every) if e)
        head = f"every seed groks only at n_train = {full}, not at every larger size"
    else:
        head = "no training-set size groks in every seed"
    # the sizes, from the smallest up, at which no seed groks
    none_below = list(itertools.takewhile(lambda n: per[n]["grokked"] == 0, sizes))
    if none_below:
        head += f"; no seed groks at n_train ≤ {none_below[-1]}"
    medians = [(n, per[n]["median_grokked_at"]) for n in sizes if per[n]["median_grokked_at"]]
    if len(medians) >= 2:
        (n0, s0), (n1, s1) = medians[0], medians[-1]
        head += f"; median steps to grok {fmt_steps(s0)} at n={n0} vs {fmt_steps(s1)} at n={n1}"
    verdict = f"{head} ({'; '.join(parts)}; budget {_budget(exp):,} steps)"
    return {
        "verdict": verdict,
        "all_seeds_grok_from": threshold,
        "per_size": {str(k): v for k, v in per.items()},
    }


# --- random features / frozen first layer -------------------------------------------------------


@register("parity_frozen_first_layer")
def parity_frozen_first_layer(exp, table: pd.DataFrame, history: pd.DataFrame) -> dict:
    """Frozen first layer (random features) vs trained, per depth when depth is a grid axis.

    Feature learning is judged necessary at a depth when the frozen runs grok in no seed while
    the trained ones grok in most; unnecessary when frozen runs grok about as often (within one
    seed) and no slower than 2× the trained median, or in most seeds where the trained runs do
    not; undetermined when neither grok in most seeds (nothing to compare); otherwise "partly".
    """
    fcol = _column(table, "frozen", "train.layers.first.frozen")
    frozen = table[fcol].map(_as_bool)
    depth = table["hidden"].map(_depth) if "hidden" in table.columns else None
    if depth is None:
        depth_of_run = [len(r.config.model.hidden) for r in exp.runs]
        ids = [r.run_id for r in exp.runs]
        depth = table["run_id"].map(dict(zip(ids, depth_of_run)))
    per, parts, needed = {}, [], []
    for d in sorted(depth.unique()):
        at = depth == d
        f = group_stats(table[at & frozen])
        t = group_stats(table[at & ~frozen])
        f_most, t_most = f["grokked"] * 2 > f["seeds"], t["grokked"] * 2 > t["seeds"]
        if not f_most and not t_most:
            judgement = "undetermined (neither frozen nor trained runs grok in most seeds)"
        elif not t_most:
            judgement = "not needed"  # the frozen runs grok in most seeds, the trained do not
        elif f["grokked"] == 0:
            judgement = "needed"
        elif f["grokked"] >= t["grokked"] - 1 and median_steps(
            table[at & frozen]["grokked_at"]
        ) <= 2 * median_steps(table[at & ~frozen]["grokked_at"]):
            judgement = "not needed"
        else:
            judgement = "partly needed (frozen runs grok later or in fewer seeds)"
        needed.append(judgement)
        label = f"{d} hidden layer{'s' if d > 1 else ''}"
        per[label] = {"frozen": f, "trained": t, "feature_learning": judgement}
        parts.append(
            f"{label}: random features (first layer frozen) {_describe(f, with_val=True)}; "
            f"trained {_describe(t)} → feature learning {judgement}"
        )
    verdict = "; ".join(parts) + f" (budget {_budget(exp):,} steps)"
    return {"verdict": verdict, "per_depth": per, "feature_learning": needed}


# --- rate limiting (Tegmark's coordination hypothesis) -----------------------------------------


def _period_columns(table: pd.DataFrame) -> tuple[str, str]:
    first = _column(table, "train.layers.first.period", "first.period")
    last = _column(table, "train.layers.last.period", "last.period")
    return first, last


@register("parity_rate_limiting")
def parity_rate_limiting(exp, table: pd.DataFrame, history: pd.DataFrame) -> dict:
    """Slowing the first (input) layer vs slowing the last (output) layer by a period P.

    The coordination hypothesis (seed 003, quoting Michaud/Tegmark) predicts that either
    imbalance delays generalisation. For each direction and period the median steps to grok
    (never = ∞) is compared with the unslowed baseline; a direction "delays grokking" at P when
    its median is at least 2× the baseline's or fewer seeds grok. When the baseline itself
    does not grok in most seeds (its median is ∞), only the seed counts compare.
    """
    fc, lc = _period_columns(table)
    p_first = table[fc].map(lambda v: int(float(v)) if _num(v) is not None else 1)
    p_last = table[lc].map(lambda v: int(float(v)) if _num(v) is not None else 1)
    base_rows = table[(p_first == 1) & (p_last == 1)]
    if base_rows.empty:
        raise ValueError("rate limiting needs a baseline condition with both periods 1")
    base = group_stats(base_rows)
    base_med = median_steps(base_rows["grokked_at"])
    directions = {}
    for name, mine, other in (("first", p_first, p_last), ("last", p_last, p_first)):
        rows = {}
        for p in sorted(set(mine[(mine > 1) & (other == 1)])):
            g = table[(mine == p) & (other == 1)]
            s = group_stats(g)
            med = median_steps(g["grokked_at"])
            ratio = _ratio(med, base_med)
            s["slowdown"] = None if ratio is None else _finite(ratio)
            s["delays_grokking"] = bool(
                s["grokked"] < base["grokked"] or (not math.isinf(base_med) and med >= 2 * base_med)
            )
            rows[int(p)] = s
        directions[name] = rows

    def line(name: str) -> str:
        items = []
        for p, s in directions[name].items():
            med = math.inf if s["median_grokked_at"] is None else s["median_grokked_at"]
            ratio = fmt_ratio(_ratio(med, base_med))
            items.append(f"×{p}: {_count(s)}, {fmt_steps(med)} ({ratio})")
        return ", ".join(items) if items else "not swept"

    shared = sorted(set(directions["first"]) & set(directions["last"]))

    def cost(s: dict) -> tuple:
        med = math.inf if s["median_grokked_at"] is None else s["median_grokked_at"]
        return (-s["grokked"], med)

    first_worse = sum(cost(directions["first"][p]) > cost(directions["last"][p]) for p in shared)
    last_worse = sum(cost(directions["last"][p]) > cost(directions["first"][p]) for p in shared)
    if not shared:
        compare = "no period was swept in both directions"
    elif first_worse > last_worse:
        compare = f"slowing the first layer hurts more at {first_worse}/{len(shared)} periods"
    elif last_worse > first_worse:
        compare = f"slowing the last layer hurts more at {last_worse}/{len(shared)} periods"
    else:
        compare = "neither direction hurts more"
    delays = {n: [p for p, s in directions[n].items() if s["delays_grokking"]] for n in directions}
    both = bool(delays["first"]) and bool(delays["last"])
    hypothesis = (
        "coordination hypothesis supported: both imbalances delay grokking"
        if both
        else "coordination hypothesis only half supported: only "
        + ("early-layer" if delays["first"] else "late-layer")
        + " slowing delays grokking (≥ 2× or fewer seeds)"
        if delays["first"] or delays["last"]
        else "coordination hypothesis not supported: neither imbalance delays grokking"
    )
    verdict = (
        f"{compare}; {hypothesis}. Baseline {_count(base)} grok at median "
        f"{fmt_steps(base_med)}; first layer slowed {line('first')}; last layer slowed "
        f"{line('last')} (budget {_budget(exp):,} steps)"
    )
    return {
        "verdict": verdict,
        "baseline": base,
        "first": {str(k): v for k, v in directions["first"].items()},
        "last": {str(k): v for k, v in directions["last"].items()},
        "first_hurts_more_at": first_worse,
        "last_hurts_more_at": last_worse,
        "shared_periods": shared,
    }


# --- weight-initialisation scale ---------------------------------------------------------------


@register("parity_init_scale")
def parity_init_scale(exp, table: pd.DataFrame, history: pd.DataFrame) -> dict:
    """Omnigrok: the grokking delay (grokked − memorised) per initialisation scale.

    "Small init removes grokking" holds when the smallest scale's median delay is under a
    quarter of the scale-1 delay (or of the largest scale's when 1 is not swept) and its seeds
    still generalise.
    """
    col = _column(table, "init_scale")
    per = {}
    for scale, g in sorted(table.groupby(col), key=lambda kv: float(kv[0])):
        s = group_stats(g)
        # never grokked counts as an infinite delay, also when it never memorised either
        d = [
            gr - me if np.isfinite(gr) and np.isfinite(me) else math.inf
            for gr, me in zip(steps_or_inf(g["grokked_at"]), steps_or_inf(g["memorized_at"]))
        ]
        s["median_delay_inf"] = float(np.median(d))
        per[float(scale)] = s
    scales = list(per)
    small = scales[0]
    ref = 1.0 if 1.0 in per else scales[-1]
    d_small, d_ref = per[small]["median_delay_inf"], per[ref]["median_delay_inf"]
    generalises = per[small]["grokked"] * 2 > per[small]["seeds"]
    removes = generalises and (d_small <= 0.25 * d_ref if not math.isinf(d_ref) else True)
    parts = []
    for sc in scales:
        s = per[sc]
        parts.append(
            f"×{sc:g}: {_count(s)} grok, memorised {fmt_steps(s['median_memorized_at'])}, "
            f"grokked {fmt_steps(s['median_grokked_at'])}, delay {fmt_steps(s['median_delay_inf'])}"
        )
    # does the delay grow with the scale? Spearman's ρ over scales (never grokked = ∞ ranks last)
    delays = [per[sc]["median_delay_inf"] for sc in scales]
    rho = None
    if len(scales) >= 3 and len(set(delays)) > 1:
        rho = float(pd.Series(scales).rank().corr(pd.Series(delays).rank()))
    trend = ""
    if rho is not None:
        direction = "rises" if rho > 0.5 else "falls" if rho < -0.5 else "shows no clear trend"
        trend = f"; the delay {direction} with the init scale (Spearman ρ = {rho:+.2f})"
    verdict = (
        f"small init {'removes' if removes else 'does not remove'} grokking: median delay "
        f"{fmt_steps(d_small)} at ×{small:g} vs {fmt_steps(d_ref)} at ×{ref:g}{trend} "
        f"({'; '.join(parts)}; budget {_budget(exp):,} steps)"
    )
    for s in per.values():
        if math.isinf(s["median_delay_inf"]):
            s["median_delay_inf"] = None
    return {
        "verdict": verdict,
        "removes_grokking": removes,
        "delay_rank_corr": rho,
        "per_scale": per,
    }


# --- double grokking (peek) ---------------------------------------------------------------------


def plateau_level(pattern_len: int) -> float:
    """Validation accuracy of a network that knows the k-bit parity but not the peek rule."""
    return 1.0 - 2.0 ** -(pattern_len + 1)


def two_stages(steps, val_acc, first: float, second: float = 0.99, min_evals: int = 3):
    """(step of first ≥ `first`, step of first ≥ `second`, evaluations in between)."""
    steps, val_acc = np.asarray(steps), np.asarray(val_acc)
    a = np.flatnonzero(val_acc >= first)
    b = np.flatnonzero(val_acc >= second)
    s1 = int(steps[a[0]]) if len(a) else None
    s2 = int(steps[b[0]]) if len(b) else None
    between = int(b[0] - a[0]) if len(a) and len(b) else (len(steps) - a[0] if len(a) else 0)
    return s1, s2, between


@register("parity_double_grokking")
def parity_double_grokking(exp, table: pd.DataFrame, history: pd.DataFrame) -> dict:
    """Two jumps in validation accuracy: to the k-parity plateau 1 − 2^−(m+1), then to 99 %.

    Stage 1 = first evaluation with validation accuracy ≥ plateau − 0.05 (the k-bit parity
    learned); stage 2 = first with ≥ 99 % (the peek rule learned too). A seed double-groks when
    it sits on the plateau: stage 2 comes at least 3 evaluations after stage 1 and at ≥ 1.5×
    its step (a network that learns both rules together passes the plateau level on its way
    up, which is not a second grokking).
    """
    cfg = exp.runs[0].config.data
    level = plateau_level(len(cfg.peek_pattern))
    first = level - 0.05
    h = history.sort_values("step")
    per_run, doubles = {}, 0
    for run_id, g in h.groupby("run_id", sort=False):
        s1, s2, between = two_stages(g["step"], g["val_acc"], first)
        double = s1 is not None and s2 is not None and between >= 3 and s2 >= 1.5 * s1
        doubles += bool(double)
        # validation accuracy between the stages (or from stage 1 to the end)
        on = g[(g["step"] >= (s1 if s1 is not None else math.inf))]
        on = on[on["step"] < (s2 if s2 is not None else math.inf)]["val_acc"]
        per_run[run_id] = {
            "stage1_step": s1,
            "stage2_step": s2,
            "stage_ratio": s2 / s1 if s1 and s2 else None,
            "double_grokking": bool(double),
            "plateau_val_acc": float(on.median()) if len(on) else None,
        }
    s1s = [r["stage1_step"] for r in per_run.values()]
    s2s = [r["stage2_step"] for r in per_run.values()]
    plateaus = [r["plateau_val_acc"] for r in per_run.values() if r["plateau_val_acc"]]
    n = len(per_run)
    reached1 = sum(s is not None for s in s1s)
    reached2 = sum(s is not None for s in s2s)
    ratios = [r["stage_ratio"] for r in per_run.values() if r["stage_ratio"]]
    verdict = (
        f"{'double grokking' if doubles * 2 > n else 'no double grokking'} "
        f"(the peek rule learned at ≥ 1.5× the step the plateau was reached, ≥ 3 evaluations "
        f"later) in {doubles}/{n} seeds: "
        f"{reached1}/{n} reach the parity plateau (≥ {first:.2f}, expected {level:.3f}) at median "
        f"step {fmt_steps(median_steps(s1s))}, "
        + (f"median val {np.median(plateaus):.3f} on it, " if plateaus else "")
        + f"{reached2}/{n} then learn the peek rule (≥ 99%) at median step "
        f"{fmt_steps(median_steps(s2s))}"
        + (f" ({np.median(ratios):.2f}× the plateau step)" if ratios else "")
        + f" (budget {_budget(exp):,} steps)"
    )
    return {
        "verdict": verdict,
        "plateau_expected": level,
        "stage1_threshold": first,
        "double_grokking_seeds": doubles,
        "per_run": per_run,
    }


# --- known k: extrapolation to a held-out k -----------------------------------------------------


@register("parity_known_k")
def parity_known_k(exp, table: pd.DataFrame, history: pd.DataFrame) -> dict:
    """With k given as a one-hot, does training on some k carry over to an unseen k?"""
    cfg = exp.runs[0].config.data
    s = group_stats(table)
    chance = abs(float(table["final_val_acc"].mean()) - 0.5) < 0.1
    verdict = (
        f"{'no' if s['grokked'] == 0 else 'some'} extrapolation to held-out k={cfg.k_val}: "
        f"{_count(s)} seeds reach 99% on it (final val {s['mean_final_val_acc']:.2f}"
        f"{', chance level' if chance else ''}) while {s['memorized']}/{s['seeds']} fit the "
        f"training k={cfg.k_train} (final train {s['mean_final_train_acc']:.2f}; budget "
        f"{_budget(exp):,} steps)"
    )
    return {"verdict": verdict, **s}
