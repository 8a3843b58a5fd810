"""Fit the pattern toy model to a trained run's measured train/validation accuracy curves.

Time axis. Grokking curves span decades of optimisation steps, and their transitions look like
sigmoids in log(step), not in step. So a fitted pattern is a sigmoid in x = log10(step + 1):
`b` is the log10 of the step where the pattern reaches half its γ and `α` its steepness per
decade (in steps, a Hill curve γ / (1 + (s / 10^b)^(−α / ln 10))). The `+1` keeps step 0.

Models. Every run gets a *memorising* pattern (g = 0: right on the training set, useless on
validation) and a *generalising* preferred pattern (g = 1: the circuit that wins once learned).
A *heuristic* (g = 1, not preferred, so it shares examples with memorisation) is added only if
it lowers the Bayesian information criterion by `heuristic_min_bic_gain`: three more
parameters must earn their keep.

Robustness. Loss spikes drop accuracy for one evaluation; a soft-L1 loss keeps them from
dragging the fit (RMSE is still reported on every point). Several starting points (read off
the data, plus random ones) guard against local minima. Bounds let a pattern's midpoint lie up
to a decade beyond the last step, so a run that never groks fits a generalising pattern that is
absent (γ ≈ 0) or late, and its report says so instead of failing. The chance floor (1/p) is
not modelled; it costs at most a few hundredths of RMSE early on.
"""

from __future__ import annotations

import math
import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import least_squares
from threadpoolctl import threadpool_limits

from grokpipe.analysis.grokking import first_step
from grokpipe.analysis.toymodel import Pattern
from grokpipe.analysis.toyparams import FitConfig

MIN_POINTS = 8  # per split: fewer evaluations cannot pin six parameters
PRESENT = 0.5  # a pattern with γ below this explains less than half the data
ABSENT = 0.05  # with γ below this, the pattern's α and b are not identified
ALPHA_BOUNDS = (0.3, 60.0)  # per decade: from "spread over 15 decades" to "a 20 % step"
ROLES = ("heuristic", "memorising", "generalising")


@dataclass(frozen=True)
class Curves:
    """One run's measured accuracies; NaN entries are masked out of the fit."""

    steps: np.ndarray
    train: np.ndarray
    val: np.ndarray

    @property
    def x(self) -> np.ndarray:
        return log_steps(self.steps)

    @property
    def finite(self) -> np.ndarray:
        """Mask of the measured values in residual order (train then val)."""
        return np.isfinite(np.concatenate([self.train, self.val]))

    @classmethod
    def from_history(cls, h: pd.DataFrame) -> Curves:
        h = h.sort_values("step")
        return cls(
            h["step"].to_numpy(float), h["train_acc"].to_numpy(float), h["val_acc"].to_numpy(float)
        )


def log_steps(steps) -> np.ndarray:
    return np.log10(np.asarray(steps, dtype=float) + 1.0)


def patterns_from(theta: np.ndarray, heuristic: bool) -> list[Pattern]:
    """θ = (γ, α, b) of memorising, generalising[, heuristic], as patterns in x = log10 step."""
    mem = Pattern(theta[0], theta[1], theta[2], g=0.0, name="memorising")
    gen = Pattern(theta[3], theta[4], theta[5], g=1.0, preferred=True, name="generalising")
    if not heuristic:
        return [mem, gen]
    return [Pattern(theta[6], theta[7], theta[8], g=1.0, name="heuristic"), mem, gen]


def _sigmoids(theta: np.ndarray, heuristic: bool, x: np.ndarray) -> list[tuple]:
    """Per fitted pattern (γ, α, b, σ): σ = 1 / (1 + exp(−α (x − b))) via tanh (no overflow)."""
    out = []
    for i in range(0, 9 if heuristic else 6, 3):
        gamma, alpha, b = theta[i : i + 3]
        out.append((gamma, alpha, b, 0.5 * (1.0 + np.tanh(0.5 * alpha * (x - b)))))
    return out


def predict(theta: np.ndarray, heuristic: bool, steps) -> tuple[np.ndarray, np.ndarray]:
    """Fitted (train, val) accuracy; `accuracies(patterns_from(θ), x)` written out for the two
    fitted shapes, because the optimiser calls it tens of thousands of times."""
    x = log_steps(steps)
    s = _sigmoids(theta, heuristic, x)
    mem, gen = s[0][0] * s[0][3], s[1][0] * s[1][3]
    heur = s[2][0] * s[2][3] if heuristic else np.zeros_like(x)
    train = 1.0 - (1.0 - mem) * (1.0 - gen) * (1.0 - heur)
    # generalising (preferred, g=1) wins when it fires; otherwise the heuristic (g=1) is right
    # alone, and shares half the examples where memorisation (g=0) fires too
    val = gen + (1.0 - gen) * heur * (1.0 - mem / 2.0)
    return train, val


def jacobian(theta: np.ndarray, heuristic: bool, steps) -> tuple[np.ndarray, np.ndarray]:
    """d(train)/dθ and d(val)/dθ, each (len(steps), len(θ)): exact derivatives make each
    optimiser step one evaluation instead of len(θ) + 1."""
    x = log_steps(steps)
    s = _sigmoids(theta, heuristic, x)
    m, g = s[0][0] * s[0][3], s[1][0] * s[1][3]
    h = s[2][0] * s[2][3] if heuristic else np.zeros_like(x)
    # derivatives of train and val with respect to each pattern's predictiveness
    d_train = [(1 - g) * (1 - h), (1 - m) * (1 - h), (1 - m) * (1 - g)]
    d_val = [-(1 - g) * h / 2, 1 - h * (1 - m / 2), (1 - g) * (1 - m / 2)]
    jt, jv = np.zeros((len(x), len(theta))), np.zeros((len(x), len(theta)))
    for k, (gamma, alpha, b, sig) in enumerate(s):
        slope = gamma * sig * (1 - sig)  # d(γσ)/d(α(x − b))
        dp = (sig, slope * (x - b), -slope * alpha)  # d p / d(γ, α, b)
        for j in range(3):
            jt[:, 3 * k + j] = d_train[k] * dp[j]
            jv[:, 3 * k + j] = d_val[k] * dp[j]
    return jt, jv


def _bounds(x: np.ndarray, heuristic: bool):
    lo_b, hi_b = float(x.min()) - 1.0, float(x.max()) + 1.0
    lo = [0.0, ALPHA_BOUNDS[0], lo_b] * (3 if heuristic else 2)
    hi = [1.0, ALPHA_BOUNDS[1], hi_b] * (3 if heuristic else 2)
    return np.array(lo), np.array(hi)


def _midpoint(x: np.ndarray, y: np.ndarray, fallback: float) -> float:
    """x where y first reaches halfway between its floor and its top (fallback if flat)."""
    if not np.isfinite(y).any():
        return fallback
    lo, hi = np.nanmin(y), np.nanmax(y)
    if hi - lo < 0.1:
        return fallback
    return float(x[np.flatnonzero(y >= (lo + hi) / 2)[0]])


def _plateau(y: np.ndarray) -> float:
    """Starting γ: the curve's top, or ½ when it never leaves the floor (or was not measured)."""
    top = np.nanmax(y) if np.isfinite(y).any() else 0.0
    return float(np.clip(top, 0.05, 1.0)) if top > 0.1 else 0.5


def _starts(c: Curves, heuristic: bool, restarts: int, rng: np.random.Generator) -> list:
    """Starting points read off the data (midpoints, plateaus) at three steepnesses, plus
    `restarts` random points inside the bounds."""
    x = c.x
    late = float(x.max()) + 0.5
    b_m = _midpoint(x, c.train, late)
    b_g = _midpoint(x, c.val, late)
    g_m, g_g = (_plateau(y) for y in (c.train, c.val))
    starts = []
    for a in (3.0, 10.0, 30.0):
        base = [g_m, a, b_m, g_g, a, b_g]
        if heuristic:  # a partial early rise, before memorisation or between the two
            starts.append(base + [0.3, a, b_m - 0.3])
            starts.append(base + [0.3, a, (b_m + b_g) / 2])
        else:
            starts.append(base)
    lo, hi = _bounds(x, heuristic)
    for _ in range(restarts):
        s = rng.uniform(lo, hi)
        s[1::3] = np.exp(rng.uniform(np.log(1.0), np.log(30.0), len(s) // 3))
        starts.append(list(s))
    return [np.clip(np.array(s, float), lo, hi) for s in starts]


def _residuals(theta, heuristic, c: Curves) -> np.ndarray:
    train, val = predict(theta, heuristic, c.steps)
    return np.concatenate([train - c.train, val - c.val])[c.finite]


def _residual_jacobian(theta, heuristic, c: Curves) -> np.ndarray:
    return np.concatenate(jacobian(theta, heuristic, c.steps))[c.finite]


def fit_model(c: Curves, heuristic: bool, cfg: FitConfig, rng: np.random.Generator) -> dict:
    """Best of several robust least-squares fits of one model; its BIC (`robust_bic`) and RMSEs."""
    lo, hi = _bounds(c.x, heuristic)

    def solve(start, budget):
        return least_squares(
            _residuals,
            start,
            jac=_residual_jacobian,
            bounds=(lo, hi),
            args=(heuristic, c),
            loss="soft_l1",
            f_scale=cfg.robust_scale,
            max_nfev=budget,
            # accuracies are known to ~1e-3; chasing the cost further only fits noise in
            # directions the data do not constrain (an absent pattern's α and b)
            ftol=1e-7,
            xtol=1e-7,
        )

    # a short run from every start, then the most promising one polished to convergence
    best = min(
        (solve(s, 200) for s in _starts(c, heuristic, cfg.restarts, rng)), key=lambda r: r.cost
    )
    final = solve(best.x, 1000)
    theta = final.x
    train, val = predict(theta, heuristic, c.steps)
    rt, rv = train - c.train, val - c.val
    r = np.concatenate([rt, rv])
    r = r[np.isfinite(r)]
    n, k = len(r), len(theta)
    rss = float(np.sum(r**2))
    return {
        "theta": theta,
        "heuristic": heuristic,
        "n": n,
        "k": k,
        "bic": robust_bic(final.cost, n, k),
        "rmse_train": _rms(rt),
        "rmse_val": _rms(rv),
        "mae_train": _median_abs(rt),
        "mae_val": _median_abs(rv),
        "rmse": float(np.sqrt(rss / n)),
    }


def robust_bic(cost: float, n: int, k: int) -> float:
    """The BIC of a soft-L1 fit, in the criterion it minimised: `least_squares` reports
    cost = ½ Σ f²·ρ(r²/f²), which is ½ RSS where every residual is small against f, so 2·cost
    takes RSS's place in the Gaussian form n·log(RSS/n) + k·log n. In RSS a single loss spike
    (an accuracy drop of 0.6) outweighs a whole curve of small residuals, and the models would
    be compared on how they miss the spike; in the robust cost it counts linearly."""
    return n * math.log(max(2 * cost, 1e-12) / n) + k * math.log(n)


def _rms(r: np.ndarray) -> float | None:
    r = r[np.isfinite(r)]
    return float(np.sqrt(np.mean(r**2))) if len(r) else None  # None: split never measured


def _median_abs(r: np.ndarray) -> float | None:
    r = r[np.isfinite(r)]
    return float(np.median(np.abs(r))) if len(r) else None


def _round(v: float | None, digits: int = 4) -> float | None:
    return None if v is None else round(v, digits)


def _pattern_report(p: Pattern, x_max: float) -> dict:
    """A fitted pattern in both time units, and whether the data actually show it."""
    gamma, alpha, b = float(p.gamma), float(p.alpha), float(p.b)
    return {
        "gamma": round(gamma, 4),
        "alpha_per_decade": round(alpha, 3),
        "b_log10_step": round(b, 4),
        "midpoint_step": round(10.0**b - 1.0, 1),
        "g": p.g,
        "preferred": p.preferred,
        "identified": gamma >= ABSENT,
        # explains at least half the data and is half-learned within the steps trained
        "learned_in_budget": gamma >= PRESENT and b <= x_max,
    }


def _heuristic_timing(patterns: dict) -> str:
    """Where the fitted heuristic sits in time: the paper's heuristics come before
    memorisation; one fitted later describes partial generalisation before grokking."""
    b_h = patterns["heuristic"]["b_log10_step"]
    if b_h <= patterns["memorising"]["b_log10_step"]:
        return "before memorising"
    if b_h <= patterns["generalising"]["b_log10_step"]:
        return "between memorising and generalising"
    return "after generalising"


def _errors(model: dict) -> dict:
    return {
        "rmse_train": _round(model["rmse_train"]),
        "rmse_val": _round(model["rmse_val"]),
        "rmse": _round(model["rmse"]),
        "median_abs_train": _round(model["mae_train"]),
        "median_abs_val": _round(model["mae_val"]),
    }


def fit_run(c: Curves, cfg: FitConfig, rng: np.random.Generator) -> dict:
    """Fit both models to one run, choose by BIC, and describe the chosen one."""
    # both splits are needed: on train alone memorising and generalising look the same
    for split, y in (("train", c.train), ("val", c.val)):
        measured = int(np.isfinite(y).sum())
        if measured < MIN_POINTS:
            return {"status": "skipped", "reason": f"only {measured} measured {split} accuracies"}
    two = fit_model(c, False, cfg, rng)
    three = fit_model(c, True, cfg, rng)
    gain = two["bic"] - three["bic"]
    chosen, other = (three, two) if gain >= cfg.heuristic_min_bic_gain else (two, three)
    x_max = float(c.x.max())
    fitted = patterns_from(chosen["theta"], chosen["heuristic"])
    patterns = {p.name: _pattern_report(p, x_max) for p in fitted}
    mem, gen = patterns["memorising"], patterns["generalising"]
    notes = []
    for role, p in patterns.items():
        if not p["identified"]:
            notes.append(f"{role} pattern absent (gamma~0): its alpha and b are not identified")
        elif not p["learned_in_budget"]:
            notes.append(f"{role} pattern not half-learned within the budget")
    both = mem["identified"] and gen["identified"]
    return {
        "status": "fitted",
        "model": model_name(chosen["heuristic"]),
        "bic_gain_heuristic": round(gain, 2),
        **_errors(chosen),
        "points": chosen["n"],
        "patterns": patterns,
        "heuristic_timing": _heuristic_timing(patterns) if chosen["heuristic"] else None,
        # the toy model's grokking delay: decades between memorising and generalising midpoints
        "gap_decades": round(gen["b_log10_step"] - mem["b_log10_step"], 4) if both else None,
        "alternative": {"model": model_name(other["heuristic"]), **_errors(other)},
        "notes": notes,
        "theta": [round(float(v), 6) for v in chosen["theta"]],
    }


def model_name(heuristic: bool) -> str:
    return "heuristic+memorising+generalising" if heuristic else "memorising+generalising"


def _fit_record(args) -> dict:
    """One run's record (module-level so that worker processes can run it)."""
    record, h, cfg = args
    if h is None or h.empty:
        return {**record, "fit": {"status": "skipped", "reason": "no history rows"}}
    h = h.sort_values("step")
    steps = h["step"].to_numpy()
    record["measured"] = {  # the SPEC's milestones, to read the fitted timescales against
        "memorized_at": first_step(steps, h["train_acc"].to_numpy()),
        "grokked_at": first_step(steps, h["val_acc"].to_numpy()),
        "last_step": int(steps[-1]),
    }
    # each run's own random stream: its fit does not depend on which other runs exist
    rng = np.random.default_rng([cfg.seed, zlib.crc32(str(record["run_id"]).encode())])
    record["fit"] = fit_run(Curves.from_history(h), cfg, rng)
    return record


def _single_threaded_blas() -> None:
    """Worker initialiser: one BLAS thread per fitting process (see `fit_experiment`)."""
    threadpool_limits(limits=1, user_api="blas")


def fit_experiment(runs: pd.DataFrame, history: pd.DataFrame, cfg: FitConfig) -> list[dict]:
    """One record per run of runs.tsv: its labels, measured milestones and fit. Runs are
    independent, so large experiments are fitted on every CPU core.

    Each fit runs with one BLAS thread. The trust-region solver takes an SVD of a ~2000 x 9
    Jacobian at every iteration, far too small to split across threads. OpenBLAS's default of
    one thread per core made a 100 000-step run's fit 28x slower on the 2-core CPU (71.7 s
    against 2.6 s for three runs, with identical results), and worse with one such process per
    core."""
    by_run = {rid: h for rid, h in history.groupby("run_id", sort=False)}
    label_cols = [col for col in runs.columns if col != "run_id"]
    jobs = []
    for _, row in runs.iterrows():
        rid = row["run_id"]
        # labels as plain Python values (numpy scalars from pandas are not all JSON-able)
        record = {"run_id": rid, **{col: _plain(row[col]) for col in label_cols}}
        jobs.append((record, by_run.get(rid), cfg))
    workers = min(len(jobs), os.cpu_count() or 1)
    if workers <= 1 or len(jobs) < 8:
        with threadpool_limits(limits=1, user_api="blas"):
            return [_fit_record(j) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers, initializer=_single_threaded_blas) as pool:
        return list(pool.map(_fit_record, jobs, chunksize=max(1, len(jobs) // (4 * workers))))


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def _median(values) -> float | None:
    vals = [v for v in values if v is not None]
    return round(float(np.median(vals)), 4) if vals else None


def summarise(records: list[dict]) -> dict:
    """Experiment-level view: how well the toy model fits, and the fitted timescales."""
    fitted = [r for r in records if r["fit"]["status"] == "fitted"]
    fits = [r["fit"] for r in fitted]

    def learned(role):
        return sum(f["patterns"][role]["learned_in_budget"] for f in fits)

    conditions = {}
    for cond in dict.fromkeys(r.get("condition", "all") for r in fitted):
        cf = [r["fit"] for r in fitted if r.get("condition", "all") == cond]
        conditions[cond] = {
            "runs": len(cf),
            "heuristic_chosen": sum("heuristic" in f["patterns"] for f in cf),
            "median_rmse_val": _median([f["rmse_val"] for f in cf]),
            "median_memorising_midpoint_step": _median(
                [f["patterns"]["memorising"]["midpoint_step"] for f in cf]
            ),
            "median_generalising_midpoint_step": _median(
                [f["patterns"]["generalising"]["midpoint_step"] for f in cf]
            ),
            "median_gap_decades": _median([f["gap_decades"] for f in cf]),
        }
    return {
        "runs": len(records),
        "fitted": len(fitted),
        "skipped": len(records) - len(fitted),
        "heuristic_chosen": sum("heuristic" in f["patterns"] for f in fits),
        "memorising_learned": learned("memorising"),
        "generalising_learned": learned("generalising"),
        "median_rmse_train": _median([f["rmse_train"] for f in fits]),
        "median_rmse_val": _median([f["rmse_val"] for f in fits]),
        "max_rmse_val": max(
            (f["rmse_val"] for f in fits if f["rmse_val"] is not None), default=None
        ),
        "median_gap_decades": _median([f["gap_decades"] for f in fits]),
        "conditions": conditions,
    }
