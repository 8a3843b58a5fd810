"""The binary-operation task: a registry entry tying the operation tables to the splits.

Two encodings of an equation `x ∘ y = c` as model input:
- `equation` (Power et al.): the four tokens `x ∘ y =`, one alphabet for operands and results,
  the answer read among every token of the vocabulary;
- `offset` (seed 004): the three tokens `[x, y + d, =]`, the second operand's tokens shifted
  by `d` (d = 0 shares one embedding table between the operands; the default d = the alphabet
  size gives each operand tables of its own), the answer read among the alphabet's values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from grokpipe.config.schema import ConfigError, check
from grokpipe.tasks.arithmetic import (
    OPERATIONS,
    build_table,
    check_operation,
    operand_values,
    value_range,
)
from grokpipe.tasks.base import TaskData
from grokpipe.tasks.splits import NEEDS_K, make_split


@dataclass(frozen=True)
class ArithmeticData:
    """`data:` block of a binary-operation experiment."""

    op: str = "x+y"
    p: int = 97
    split: Literal["random", "strip", "rect"] = "random"
    train_fraction: float = 0.5
    k: int | None = None
    encoding: Literal["equation", "offset"] = "equation"
    # `offset` only: d, the second operand's token shift; None = the alphabet's size
    operand_offset: int | None = None

    @property
    def has_sequence_targets(self) -> bool:
        """Whether every next token is a target (seq2seq loss): only `x ∘ y = c` is a
        sequence of the vocabulary's tokens; the offset encoding predicts the answer alone."""
        return self.encoding == "equation"

    def offset(self) -> int:
        """d of the offset encoding: where the second operand's tokens start."""
        if self.operand_offset is not None:
            return self.operand_offset
        return value_range(OPERATIONS[self.op].kind, self.p)[1]

    def validate(self, key: str) -> None:
        problem = check_operation(self.op, self.p)
        if problem:
            raise ConfigError(f"{key}.op" if self.op not in OPERATIONS else f"{key}.p", problem)
        if self.encoding == "offset":
            d = self.operand_offset
            check(
                d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 0),
                f"{key}.operand_offset",
                f"must be a non-negative integer or null (the alphabet's size), got {d!r}",
            )
        else:
            check(
                self.operand_offset is None,
                f"{key}.operand_offset",
                "only the 'offset' encoding shifts the second operand (set data.encoding: offset)",
            )
        check(0 < self.train_fraction < 1, f"{key}.train_fraction", "must lie in (0, 1)")
        if self.split in NEEDS_K:
            check(self.k is not None, f"{key}.k", f"split {self.split!r} needs k")
            xs, _ = operand_values(OPERATIONS[self.op], self.p)
            lo, hi = int(xs.min()), int(xs.max())
            check(
                lo <= self.k < hi,
                f"{key}.k",
                f"must lie in [{lo}, {hi - 1}] for {self.op} mod {self.p} "
                f"(a test region that is empty or covers every operand is no split), got {self.k}",
            )
        else:
            check(self.k is None, f"{key}.k", f"split {self.split!r} takes no k")
        n_train, n_val = self.split_sizes()
        check(
            n_val > 0,
            f"{key}.k" if self.split in NEEDS_K else f"{key}.train_fraction",
            f"leaves no validation rows for {self.op} mod {self.p}",
        )
        check(
            n_train > 0 and (self.split in NEEDS_K or n_val > 0),
            f"{key}.train_fraction",
            f"{self.train_fraction} leaves no training rows for {self.op} mod {self.p}",
        )

    def split_sizes(self) -> tuple[int, int]:
        """(training rows, validation rows) this split gives, without building the table."""
        xs, ys = operand_values(OPERATIONS[self.op], self.p)
        x, y = np.meshgrid(xs, ys, indexing="ij")
        if self.split == "random":
            n_train = int(round(self.train_fraction * x.size))
            return n_train, x.size - n_train
        region = (x <= self.k) if self.split == "strip" else (x <= self.k) & (y <= self.k)
        n_region = int(region.sum())
        return int(round(self.train_fraction * (x.size - n_region))), n_region


class ArithmeticTask:
    name = "arithmetic"
    Config = ArithmeticData

    def dataset_key(self, cfg: ArithmeticData, seed: int) -> str:
        if cfg.encoding == "offset":
            return f"{cfg.op}_p{cfg.p}_offset{cfg.offset()}"
        return f"{cfg.op}_p{cfg.p}"

    def build(self, cfg: ArithmeticData, seed: int) -> TaskData:
        table = build_table(cfg.op, cfg.p)
        op = OPERATIONS[cfg.op]
        extras = {"x": table.x, "y": table.y, "c": table.c}
        # token ranges of the two operands, where the mean embedding difference (seed 004)
        # walks from each value's token to the next: operands need a natural order (not S5)
        low, n_values = value_range(op.kind, cfg.p)
        ranges = [[int(v.min()) - low, int(v.max()) - low + 1] for v in operand_values(op, cfg.p)]
        if cfg.encoding == "offset":
            d = cfg.offset()
            x_tok, y_tok = table.tokens[:, 0], table.tokens[:, 2] + d
            eq_tok = max(n_values, n_values + d)  # after both operands' tokens
            inputs = np.stack([x_tok, y_tok, np.full_like(x_tok, eq_tok)], axis=1)
            info = {"vocab_size": eq_tok + 1, "seq_len": 3, "n_classes": n_values}
            ranges[1] = [ranges[1][0] + d, ranges[1][1] + d]
            data = TaskData(inputs=inputs, targets=table.tokens[:, 4], info=info, extras=extras)
        else:
            info = {"vocab_size": table.vocab_size, "seq_len": 4, "n_classes": table.vocab_size}
            data = TaskData(
                inputs=table.tokens[:, :4],
                targets=table.tokens[:, 4],
                seq_targets=table.tokens[:, 1:],
                info=info,
                extras=extras,
            )
        if op.kind != "s5":
            data.info["med_ranges"] = ranges
            # the inputs whose operands are equal, in the operands' order: where a model with
            # a fixed embedding reads its MED (seed 004's one-hot MLP)
            same = np.flatnonzero(table.x == table.y)
            same = same[np.argsort(table.x[same], kind="stable")]
            data.info["med_diagonal"] = data.inputs[same].tolist()
        return data

    def split(self, cfg: ArithmeticData, data: TaskData, seed: int):
        return make_split(
            cfg.split, data.extras["x"], data.extras["y"], cfg.train_fraction, cfg.k, seed
        )


def symmetry_score(data: TaskData) -> float:
    """Fraction of operand pairs (a, b) with a∘b = b∘a, over pairs where both are defined."""
    x, y, c = data.extras["x"], data.extras["y"], data.extras["c"]
    lookup = {(a, b): r for a, b, r in zip(x.tolist(), y.tolist(), c.tolist())}
    both = [(a, b) for (a, b) in lookup if (b, a) in lookup]
    return float(np.mean([lookup[(a, b)] == lookup[(b, a)] for a, b in both]))


def answer_agreement(cfg: ArithmeticData, data: TaskData, rows: np.ndarray, op_name: str):
    """Share of `rows` of `data` (the table of `cfg`) whose answer is also operation
    `op_name`'s answer to the same operands: the accuracy on them of a model that knows only
    `op_name`. Seed 002's transfer fine-tunes a grokked int_x−y model on the asymmetric task,
    which is int_x−y wherever the divisor is even. None where the two operations' alphabets
    differ (another kind), so that their tokens mean other values."""
    if OPERATIONS[op_name].kind != OPERATIONS[cfg.op].kind:
        return None
    source = build_table(op_name, cfg.p)
    answer = dict(zip(zip(source.x.tolist(), source.y.tolist()), source.c.tolist()))
    x, y, c = (data.extras[k][rows].tolist() for k in ("x", "y", "c"))
    hits = [answer.get(pair) == v for pair, v in zip(zip(x, y), c)]
    return float(np.mean(hits)) if hits else None
