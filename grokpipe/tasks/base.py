"""What every task hands the training engine: tensors of inputs and targets, plus a split.

A task is a registry entry (see `grokpipe.tasks.TASKS`) with a typed data config, a builder and a
splitter. Models size themselves from `TaskData.info`; the engine never looks inside a task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass
class TaskData:
    """One dataset: every example of a task instance.

    inputs:       [N, ...] model inputs (int64 token ids, or float32 features / images)
    targets:      [N] int64 class ids, or float32 ±1 for binary tasks (n_classes == 1)
    seq_targets:  [N, T] next-token targets for sequence tasks (seq2seq loss), else None
    info:         sizes a model needs (vocab_size, seq_len, n_classes, input_dim, ...)
    extras:       task-specific arrays kept for analysis (operands, results, ...)
    """

    inputs: np.ndarray
    targets: np.ndarray
    info: dict[str, Any]
    seq_targets: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.inputs)

    def shape_signature(self, padded: frozenset[str] = frozenset()) -> tuple:
        """What must agree for two datasets to train as members of one stacked ensemble.

        The number of examples is not part of it: the engine pads smaller datasets with rows
        that are never sampled and weigh nothing, so x/y (p·(p−1) rows) trains beside x+y.
        Nor are the sizes in `padded` (vocabulary, classes), where the model pads them."""
        seq = None if self.seq_targets is None else self.seq_targets.shape[1:]
        sizes = ((k, v) for k, v in self.info.items() if isinstance(v, (int, str)))
        return (
            self.inputs.shape[1:],
            str(self.inputs.dtype),
            self.targets.shape[1:],
            str(self.targets.dtype),
            seq,
            tuple(sorted((k, v) for k, v in sizes if k not in padded)),
        )


def stack_padded(arrays: list[np.ndarray]) -> np.ndarray:
    """Stack arrays whose first dims differ, padding each to the longest with copies of its own
    first row: a row that already exists adds no new value (token, prefix) to its member."""
    n = max(len(a) for a in arrays)
    return np.stack([np.concatenate([a, np.repeat(a[:1], n - len(a), 0)]) for a in arrays])


class Task(Protocol):
    """A registry entry: typed data config, dataset builder, splitter."""

    name: str
    Config: type

    def dataset_key(self, cfg: Any, seed: int) -> str:
        """Identity of the dataset a run uses; runs with equal keys share one dataset."""

    def build(self, cfg: Any, seed: int) -> TaskData: ...

    def split(self, cfg: Any, data: TaskData, seed: int) -> tuple[np.ndarray, np.ndarray]: ...
