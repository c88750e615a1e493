"""Task registry: `get_task(name)` serves real datasets and offline stand-ins alike."""

from __future__ import annotations

from esft.errors import EsftError
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


__all__ = ["TASKS", "RowError", "Task", "get_task"]
