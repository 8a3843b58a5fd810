"""The pattern toy model of grokking and double descent (Davies et al. 2022; seed 000).

A *pattern* is an input→output rule the network picks up during training. Its predictiveness
(the fraction of training examples it classifies correctly) follows a sigmoid in time,

    p_i(t) = γ_i / (1 + exp(−α_i (t − b_i))),

and on each example each pattern "fires" (is correct) as an independent Bernoulli event
X_i ~ Bern(p_i(t)). The network is right on a training example when any pattern fires, so

    train(t) = P(∪ X_i) = 1 − ∏ (1 − p_i(t)).

On a test example a pattern that fires generalises with probability g_i. Which pattern is used
when several fire decides the test accuracy:

* no preferred pattern fires: the firing patterns share the example equally, so the test
  probability is the mean of their g_i (the seed's inclusion–exclusion formula);
* some preferred pattern fires: preferred patterns win over all others. With one preferred
  pattern this is exactly the seed's rule (its g is used whenever it fires). With several we
  use the same sharing rule among the *firing preferred* patterns: the mean of their g_i.

Computation is exact and vectorised over t. For a group of patterns sharing equally,
E[Σ_{i∈S} g_i / |S|] = Σ_i g_i p_i E[1 / (1 + K_{−i})], where K_{−i} counts the *other* group
members that fire; K_{−i} is Poisson-binomial, whose distribution a short dynamic programme
gives exactly. That is O(n³·T) instead of the 2ⁿ terms of inclusion–exclusion, so any number
of patterns works. `accuracies_by_subsets` is the literal sum over the 2ⁿ firing sets, kept as
an independent reference for small n.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from grokpipe.config.schema import check


@dataclass(frozen=True)
class Pattern:
    """One pattern: maximum predictiveness γ, learning speed α, inflection b, generalisation g.

    `preferred` patterns are used whenever they fire (the slow, well-generalising circuit).
    Also the params.yaml schema of one pattern (`from_dict(Pattern, ...)`).
    """

    gamma: float
    alpha: float
    b: float
    g: float
    preferred: bool = False
    name: str = ""

    def validate(self, key: str) -> None:
        check(0 <= self.gamma <= 1, f"{key}.gamma", f"must lie in [0, 1], got {self.gamma}")
        check(self.alpha >= 0, f"{key}.alpha", f"must be non-negative, got {self.alpha}")
        check(0 <= self.g <= 1, f"{key}.g", f"must lie in [0, 1], got {self.g}")

    def predictiveness(self, t) -> np.ndarray:
        """p(t) = γ / (1 + exp(−α (t − b))), written via tanh so that it never overflows."""
        t = np.asarray(t, dtype=float)
        return self.gamma * 0.5 * (1.0 + np.tanh(0.5 * self.alpha * (t - self.b)))


def predictiveness(patterns: list[Pattern], t) -> np.ndarray:
    """Array (n_patterns, len(t)) of every pattern's p_i(t)."""
    t = np.atleast_1d(np.asarray(t, dtype=float))
    return np.stack([p.predictiveness(t) for p in patterns]) if patterns else np.zeros((0, len(t)))


def train_accuracy_from(p: np.ndarray) -> np.ndarray:
    """P(∪ X_i) = 1 − ∏(1 − p_i) for predictiveness rows p (n, T)."""
    return 1.0 - np.prod(1.0 - p, axis=0)


def _shared_gain(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """E[mean of g over the firing members] for one equal-sharing group (0 if none fires).

    For each member i: g_i · p_i · E[1/(1 + K)], K = number of the other members firing;
    K's distribution is built one member at a time (Poisson-binomial recursion).
    """
    n, T = p.shape
    out = np.zeros(T)
    for i in range(n):
        if g[i] == 0:
            continue
        dist = np.zeros((n, T))  # dist[k] = P(K = k); K ≤ n − 1
        dist[0] = 1.0
        for j in range(n):
            if j == i:
                continue
            # K ← K + Bern(p_j): shift by one with probability p_j, in place from the top
            dist[1:] = dist[1:] * (1.0 - p[j]) + dist[:-1] * p[j]
            dist[0] = dist[0] * (1.0 - p[j])
        weights = 1.0 / np.arange(1, n + 1)[:, None]
        out += g[i] * p[i] * np.sum(dist * weights, axis=0)
    return out


def heldout_accuracy_from(p: np.ndarray, g: np.ndarray, preferred: np.ndarray) -> np.ndarray:
    """Exact test accuracy for predictiveness rows p (n, T), generalisations g, preferred mask.

    Preferred patterns decide whenever any of them fires; otherwise the others share equally.
    """
    pref, rest = np.asarray(preferred, bool), ~np.asarray(preferred, bool)
    none_preferred = np.prod(1.0 - p[pref], axis=0)  # P(no preferred pattern fires)
    return _shared_gain(p[pref], g[pref]) + none_preferred * _shared_gain(p[rest], g[rest])


def accuracies(patterns: list[Pattern], t) -> tuple[np.ndarray, np.ndarray]:
    """(train accuracy, test accuracy) at times t, exact."""
    p = predictiveness(patterns, t)
    g = np.array([q.g for q in patterns], dtype=float)
    pref = np.array([q.preferred for q in patterns], dtype=bool)
    return train_accuracy_from(p), heldout_accuracy_from(p, g, pref)


def heldout_probability(fired: list[bool], patterns: list[Pattern]) -> float:
    """Test-time generalisation probability for one set of firing patterns (the rule itself)."""
    firing = [q for q, f in zip(patterns, fired) if f]
    chosen = [q for q in firing if q.preferred] or firing
    return float(np.mean([q.g for q in chosen])) if chosen else 0.0


def accuracies_by_subsets(patterns: list[Pattern], t) -> tuple[np.ndarray, np.ndarray]:
    """The same two curves as the literal sum over all 2ⁿ firing sets (reference, small n)."""
    if len(patterns) > 16:
        raise ValueError("accuracies_by_subsets enumerates 2^n firing sets; use accuracies()")
    p = predictiveness(patterns, t)
    train, test = np.zeros(p.shape[1]), np.zeros(p.shape[1])
    for fired in itertools.product([False, True], repeat=len(patterns)):
        mask = np.array(fired, dtype=bool)
        prob = np.prod(np.where(mask[:, None], p, 1.0 - p), axis=0)  # exactly this set fires
        if mask.any():
            train += prob
        test += heldout_probability(list(fired), patterns) * prob
    return train, test


def simulate(patterns: list[Pattern], t, draws: int, rng: np.random.Generator, chunk: int = 20_000):
    """Monte-Carlo estimate of (train, test) accuracy: draw the Bernoulli events and the
    test-time generalisation coin explicitly, so it shares no algebra with `accuracies`."""
    p = predictiveness(patterns, t)  # (n, T)
    n, T = p.shape
    g = np.array([q.g for q in patterns])
    pref = np.array([q.preferred for q in patterns], dtype=bool)
    train_hits, test_hits = np.zeros(T), np.zeros(T)
    for start in range(0, draws, chunk):  # chunks keep memory bounded for many draws
        m = min(chunk, draws - start)
        fired = rng.random((m, n, T)) < p[None]  # (m, n, T)
        train_hits += fired.any(axis=1).sum(axis=0)
        # the pattern used on a test example: uniformly at random among the firing preferred
        # patterns if any fire, else among all firing ones (equal sharing, as a lottery)
        some_pref = fired[:, pref].any(axis=1, keepdims=True)
        eligible = np.where(some_pref, fired & pref[None, :, None], fired)
        used = np.where(eligible, rng.random((m, n, T)), -1.0).argmax(axis=1)  # (m, T)
        correct = eligible.any(axis=1) & (rng.random((m, T)) < g[used])
        test_hits += correct.sum(axis=0)
    return train_hits / draws, test_hits / draws
