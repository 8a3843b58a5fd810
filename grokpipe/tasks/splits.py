"""Train/validation splits of an operation table (Power et al.'s random split; seed 004's
structured `strip` and `rect` splits, which hold out a whole region of the operand plane).

A split is two disjoint index arrays into the table's rows. `strip` and `rect` take the test set
from the region and draw the training set from the rest, `train_fraction` of the rest, so a
structured split never trains on its own test region.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Array = np.ndarray
SplitFn = Callable[[Array, Array, float, int | None, np.random.Generator], tuple[Array, Array]]


def _take_fraction(pool: Array, fraction: float, rng: np.random.Generator) -> tuple[Array, Array]:
    order = rng.permutation(pool)
    n_train = int(round(fraction * len(pool)))
    return np.sort(order[:n_train]), np.sort(order[n_train:])


def random_split(x, y, fraction, k, rng):
    """Shuffle every row with the seed; the first `fraction` train, the rest validate."""
    return _take_fraction(np.arange(len(x)), fraction, rng)


def strip_split(x, y, fraction, k, rng):
    """Rows with first operand ≤ k are the test set; train is `fraction` of the other rows."""
    test = np.flatnonzero(x <= k)
    train, _ = _take_fraction(np.flatnonzero(x > k), fraction, rng)
    return train, test


def rect_split(x, y, fraction, k, rng):
    """The square x ≤ k and y ≤ k is the test set; train is `fraction` of the other rows."""
    inside = (x <= k) & (y <= k)
    train, _ = _take_fraction(np.flatnonzero(~inside), fraction, rng)
    return train, np.flatnonzero(inside)


SPLITS: dict[str, SplitFn] = {"random": random_split, "strip": strip_split, "rect": rect_split}
NEEDS_K = {"strip", "rect"}


def make_split(name: str, x: Array, y: Array, fraction: float, k: int | None, seed: int):
    """(train_idx, val_idx) for split `name`, deterministic in `seed`."""
    return SPLITS[name](x, y, fraction, k, np.random.default_rng(seed))
