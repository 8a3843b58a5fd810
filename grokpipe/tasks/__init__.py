"""Task registry: name -> task object (typed data config, dataset builder, splitter)."""

from __future__ import annotations

from grokpipe.tasks.arithmetic_task import ArithmeticTask
from grokpipe.tasks.base import Task, TaskData
from grokpipe.tasks.parity import ParityTask

TASKS: dict[str, Task] = {t.name: t for t in (ArithmeticTask(), ParityTask())}

__all__ = ["TASKS", "Task", "TaskData"]
