"""Task registry: `get_task(name)` serves real datasets and offline stand-ins alike."""

from __future__ import annotations

import os
from typing import Any

from esft.errors import EsftError
from esft.io import read_jsonl
from esft.tasks.base import RowError, Task
from esft.tasks.boolq import BoolQ
from esft.tasks.chemistry import Chemistry
from esft.tasks.conciseness import Conciseness
from esft.tasks.countdown import Countdown
from esft.tasks.countdown_lbes import CountdownLbes
from esft.tasks.gsm8k import Gsm8k
from esft.tasks.math_task import Math

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (Countdown, CountdownLbes, Math, Chemistry, BoolQ, Gsm8k, Conciseness)}


def get_task(name: str, **options) -> Task:
    """The task called `name`; an unknown name lists the known ones."""
    try:
        cls = TASKS[name]
    except KeyError:
        raise EsftError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None
    return cls(**options)


def read_rows(task: Task, path: str | os.PathLike) -> list[dict[str, Any]]:
    """A task's rows from a jsonl file (train.jsonl, test.jsonl), each checked against the task's schema:
    a wrong-typed field is an error naming the file, row and field, not a row silently scored 0."""
    rows = read_jsonl(path, f"{task.name} rows, one JSON object a line")
    if not rows:
        raise EsftError(f"{path}: no rows (expected {task.name} rows, one JSON object a line)")
    for number, row in enumerate(rows, 1):
        try:
            task.validate_row(row, number)
        except RowError as err:
            raise RowError(f"{path}: {err} ({task.name} rows)") from None
    return rows


__all__ = ["TASKS", "RowError", "Task", "get_task", "read_rows"]
