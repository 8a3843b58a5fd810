"""Sparse parity (seed 003, tiny-gen): x ∈ {±1}ⁿ, label = x[0]·x[1]·…·x[k−1] (±1).

Variants (`data.variant`):
- `hidden`: k is not given; the network sees only the n bits (n = 40, k = 3 by default).
- `known`:  a one-hot of k (width `k_max`) is prepended to the bits; training rows draw k from
            `k_train`, validation rows from `k_val` (held out), so validation asks whether the
            network extrapolates to a value of k it never saw.
- `peek`:   double grokking. Rows whose prefix x[:len(peek_pattern)] equals `peek_pattern`
            (±1 values, default [1, 1, −1], the source's `peek_condition` with k = 3, matching one
            row in eight) have their label multiplied by the extra bit x[peek_at] (default
            index k + 1, SPEC's x[k+1]; tiny-gen's docstring says "the (k+1)th value", index
            k: every bit outside x[:k] is an independent fair coin, so either index sets the
            same task). A network that learns only the k-bit parity is right on every
            other row and on half of the pattern rows: validation accuracy 1 − 2^−(m+1), that is
            0.9375 for m = 3.

Rows are sampled uniformly without repeats (no validation row is also a training row), from a
generator seeded by the run seed, so each seed has its own dataset. `pool` rows are generated
per dataset (default n_train + n_val): the first `n_train` train, the last `n_val` validate.
Setting one `pool` for a data-size sweep keeps every dataset the same shape, so all sizes train
as one stacked ensemble, with nested training sets and one validation set per seed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from grokpipe.config.schema import check, to_dict
from grokpipe.tasks.base import TaskData

_DATA_STREAM = 0x9A217  # salt: the data generator never shares a stream with other seeded draws


@dataclass(frozen=True)
class ParityData:
    """`data:` block of a parity experiment."""

    variant: Literal["hidden", "known", "peek"] = "hidden"
    n: int = 40  # number of ±1 bits
    k: int = 3  # parity order (hidden, peek)
    n_train: int = 1000
    n_val: int = 100
    pool: int | None = None  # rows generated per dataset; default n_train + n_val
    k_train: list[int] = field(default_factory=lambda: [2, 3, 4, 5])  # known
    k_val: list[int] = field(default_factory=lambda: [6])  # known
    k_max: int | None = None  # known: one-hot width, default max(k_train + k_val)
    peek_pattern: list[int] = field(default_factory=lambda: [1, 1, -1])  # peek
    peek_at: int | None = None  # peek: the extra bit, default k + 1

    @property
    def rows(self) -> int:
        return self.pool if self.pool is not None else self.n_train + self.n_val

    @property
    def one_hot_width(self) -> int:
        return self.k_max if self.k_max is not None else max(self.k_train + self.k_val)

    @property
    def peek_index(self) -> int:
        return self.peek_at if self.peek_at is not None else self.k + 1

    def validate(self, key: str) -> None:
        check(self.n >= 1, f"{key}.n", f"must be positive, got {self.n}")
        check(self.n_train >= 1, f"{key}.n_train", f"must be positive, got {self.n_train}")
        check(self.n_val >= 1, f"{key}.n_val", f"must be positive, got {self.n_val}")
        if self.pool is not None:
            check(
                self.pool >= self.n_train + self.n_val,
                f"{key}.pool",
                f"must be at least n_train + n_val = {self.n_train + self.n_val}, got {self.pool}",
            )
        if self.variant in ("hidden", "peek"):
            check(1 <= self.k <= self.n, f"{key}.k", f"must lie in [1, n={self.n}], got {self.k}")
            check(
                2**self.n >= self.rows,
                f"{key}.n",
                f"{self.rows} distinct rows need n ≥ {int(np.ceil(np.log2(self.rows)))}",
            )
        if self.variant == "known":
            for name in ("k_train", "k_val"):
                ks = getattr(self, name)
                check(len(ks) > 0, f"{key}.{name}", "needs at least one value of k")
                check(
                    all(1 <= k <= self.n for k in ks),
                    f"{key}.{name}",
                    f"every k must lie in [1, n={self.n}], got {ks}",
                )
            both = sorted(set(self.k_train) & set(self.k_val))
            check(not both, f"{key}.k_val", f"must be disjoint from k_train; both hold {both}")
            need = max(self.k_train + self.k_val)
            check(
                self.one_hot_width >= need,
                f"{key}.k_max",
                f"the one-hot of k needs width ≥ {need}, got {self.one_hot_width}",
            )
            for name, ks, count in (
                ("k_train", self.k_train, self.rows - self.n_val),
                ("k_val", self.k_val, self.n_val),
            ):
                check(
                    len(set(ks)) * 2**self.n >= count,
                    f"{key}.n",
                    f"{count} distinct rows for {name}={ks} need more than {self.n} bits",
                )
        if self.variant == "peek":
            m = len(self.peek_pattern)
            check(
                1 <= m <= self.n and all(v in (-1, 1) for v in self.peek_pattern),
                f"{key}.peek_pattern",
                f"must be a non-empty list of ±1 of length ≤ n, got {self.peek_pattern}",
            )
            check(
                self.k <= self.peek_index < self.n,
                f"{key}.peek_at",
                f"the extra bit must lie outside x[:k] and inside x: [{self.k}, {self.n - 1}], "
                f"got {self.peek_index}",
            )


def parity_labels(x: np.ndarray, k: int | np.ndarray) -> np.ndarray:
    """Product of x[:, :k] per row (±1); k may be one int or one value per row."""
    k = np.broadcast_to(np.asarray(k), (len(x),))
    mask = np.arange(x.shape[1])[None, :] < k[:, None]
    return np.where(mask, x, 1).prod(axis=1).astype(np.float32)


def pattern_match(x: np.ndarray, pattern: list[int]) -> np.ndarray:
    """Rows whose prefix equals `pattern`."""
    return (x[:, : len(pattern)] == np.asarray(pattern)[None, :]).all(axis=1)


def _unique_rows(rng: np.random.Generator, count: int, n: int, exclude=()) -> np.ndarray:
    """`count` distinct rows of ±1 (int8), none equal to a row of `exclude`."""
    seen = {r.tobytes() for r in exclude}
    out: list[np.ndarray] = []
    while len(out) < count:
        draw = rng.integers(0, 2, size=(count - len(out) + 8, n), dtype=np.int8) * 2 - 1
        for r in draw.astype(np.int8):
            b = r.tobytes()
            if b not in seen:
                seen.add(b)
                out.append(r)
                if len(out) == count:
                    break
    return np.stack(out) if out else np.zeros((0, n), np.int8)


def _draw_ks(rng: np.random.Generator, ks: list[int], count: int, n: int):
    """(k per row, bits) with distinct bits within each k.

    Each row draws its k uniformly from `ks`; a k drawn more often than it has distinct rows
    (2^n, reachable only near the limit `validate` checks) gives its extra rows, in order, to
    the k values with rows to spare, so that the draw always ends. Below the limit no row
    moves, and the datasets are those of a plain uniform draw."""
    k = rng.choice(np.asarray(ks), size=count)
    cap = 2**n
    values, counts = np.unique(k, return_counts=True)
    spare = [v for v in ks if (k == v).sum() < cap]
    for v, c in zip(values, counts):
        if c > cap:
            for row in np.flatnonzero(k == v)[cap:]:
                while (k == spare[0]).sum() >= cap:
                    spare.pop(0)
                k[row] = spare[0]
    x = np.zeros((count, n), np.int8)
    for v in np.unique(k):
        rows = np.flatnonzero(k == v)
        x[rows] = _unique_rows(rng, len(rows), n)
    return k.astype(np.int64), x


class ParityTask:
    name = "parity"
    Config = ParityData

    def dataset_key(self, cfg: ParityData, seed: int) -> str:
        blob = json.dumps(to_dict(cfg), sort_keys=True).encode()
        digest = hashlib.sha1(blob).hexdigest()[:8]
        return f"{cfg.variant}_n{cfg.n}_rows{cfg.rows}_seed{seed}_{digest}"

    def build(self, cfg: ParityData, seed: int) -> TaskData:
        rng = np.random.default_rng([seed, _DATA_STREAM])
        rows, n = cfg.rows, cfg.n
        extras: dict[str, np.ndarray] = {}
        if cfg.variant == "known":
            n_train_pool = rows - cfg.n_val
            k_tr, x_tr = _draw_ks(rng, cfg.k_train, n_train_pool, n)
            k_va, x_va = _draw_ks(rng, cfg.k_val, cfg.n_val, n)
            k, x = np.concatenate([k_tr, k_va]), np.concatenate([x_tr, x_va])
            y = parity_labels(x, k)
            one_hot = np.zeros((rows, cfg.one_hot_width), np.float32)
            one_hot[np.arange(rows), k - 1] = 1.0
            inputs = np.concatenate([one_hot, x.astype(np.float32)], axis=1)
            extras["k"] = k
        else:
            x = _unique_rows(rng, rows, n)
            y = parity_labels(x, cfg.k)
            if cfg.variant == "peek":
                hit = pattern_match(x, cfg.peek_pattern)
                y = np.where(hit, y * x[:, cfg.peek_index], y).astype(np.float32)
                extras["peek"] = hit
            inputs = x.astype(np.float32)
        extras["bits"] = x.astype(np.int8)
        return TaskData(
            inputs=inputs,
            targets=y.astype(np.float32),
            info={"input_dim": int(inputs.shape[1]), "n_classes": 1},
            extras=extras,
        )

    def split(self, cfg: ParityData, data: TaskData, seed: int):
        rows = len(data)
        return np.arange(cfg.n_train), np.arange(rows - cfg.n_val, rows)
