"""The task interface shared by real datasets and their offline stand-ins.

A task turns a row (a dict in the task's row schema) into chat messages, and grades a completion
against the row. Graders are a security boundary: completions are untrusted model output, so they are
parsed with bounded, exception-free code and never executed.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from esft.errors import EsftError

MAX_COMPLETION_CHARS = 20_000
"""Graders look only at the last this-many characters of a completion (answers come last)."""

PAPER = "paper"
"""`prompt_style` of rows mapped from a real dataset: the paper's system and user prompts.

Stand-in rows carry no `prompt_style`: their short prompts are the ones the embedded tiny model was
warm-started on, so they must not change."""


class RowError(EsftError):
    """A dataset row that does not match the task's schema."""


def tail(completion: str) -> str:
    """Bound the text a grader scans: answers are at the end, and regexes stay linear in a bounded input."""
    if not isinstance(completion, str):
        return ""
    return completion[-MAX_COMPLETION_CHARS:]


class Task(ABC):
    """One task: its row schema, prompt, grader, training reward and a seeded stand-in generator."""

    name: ClassVar[str]
    fields: ClassVar[dict[str, type | tuple[type, ...]]]
    """Row fields the prompt and grader read, with their types."""
    paper_system_prompt: ClassVar[str | None] = None
    """System turn of rows in the paper's prompt style (stand-in rows have none)."""
    default_format_bonus: ClassVar[float] = 0.0
    real_dataset: ClassVar[str | None] = None
    reward_label: ClassVar[str] = "reward (score + format bonus)"
    """What `reward` measures, with its unit: the axis label of per-prompt reward figures."""
    """The hub dataset whose raw rows `from_raw` maps (None: the task has only its stand-in)."""
    prompt_sets: ClassVar[tuple[str, ...]] = ()
    """Names of shipped prompt sets the offline stand-in can serve (tasks.<name>.prompts; none: no choice)."""

    def __init__(self, format_bonus: float | None = None) -> None:
        self.format_bonus = self.default_format_bonus if format_bonus is None else format_bonus

    # --- rows -------------------------------------------------------------------------------
    @abstractmethod
    def generate_rows(self, n: int, rng: random.Random) -> list[dict[str, Any]]:
        """Offline stand-in rows in this task's schema, drawn from `rng`."""

    def stand_in(self, n_train: int, n_test: int, seed: int) -> tuple[list[dict], list[dict]]:
        """Disjoint train and test rows from the seeded generator (no prompt appears in both)."""
        rng = random.Random(seed)
        rows: dict[str, dict[str, Any]] = {}
        for _ in range(100):
            for row in self.generate_rows(n_train + n_test, rng):
                rows.setdefault(self.user_prompt(row), row)
            if len(rows) >= n_train + n_test:
                break
        else:
            raise EsftError(f"{self.name}: the generator yields fewer than {n_train + n_test} distinct prompts")
        unique = list(rows.values())
        return unique[:n_train], unique[n_train : n_train + n_test]

    def from_raw(self, raw: dict[str, Any], index: int) -> dict[str, Any]:
        """Map a row of the task's real dataset (its own column names) into this task's row schema.

        Raises RowError naming `index` and the field when the raw row does not fit."""
        raise NotImplementedError(f"task {self.name} has no real dataset")

    def validate_row(self, row: Any, index: int) -> None:
        """Raise RowError naming the row index and field if `row` does not fit the schema."""
        if not isinstance(row, dict):
            raise RowError(f"row {index}: expected an object, got {type(row).__name__}")
        for field, typ in self.fields.items():
            if field not in row:
                raise RowError(f"row {index}: missing field {field!r}")
            value = row[field]
            # bool is an int subclass: never accept it where a number is expected, and vice versa
            if isinstance(value, bool) and bool not in _as_tuple(typ):
                raise RowError(f"row {index}: field {field!r} must be {_type_names(typ)}, got bool")
            if not isinstance(value, typ):
                raise RowError(
                    f"row {index}: field {field!r} must be {_type_names(typ)}, got {type(value).__name__}"
                )

    # --- prompt -----------------------------------------------------------------------------
    @abstractmethod
    def user_prompt(self, row: dict[str, Any]) -> str:
        """The user turn for `row`."""

    def system_prompt(self, row: dict[str, Any]) -> str | None:
        return self.paper_system_prompt if row.get("prompt_style") == PAPER else None

    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        """System (if any) and user turns; the rollout renders them through the chat template."""
        system = self.system_prompt(row)
        msgs = [{"role": "system", "content": system}] if system else []
        return msgs + [{"role": "user", "content": self.user_prompt(row)}]

    @abstractmethod
    def reference(self, row: dict[str, Any]) -> str:
        """A completion that scores 1 on `row` (used to warm-start the tiny model and in tests)."""

    def plain_answers(self, row: dict[str, Any]) -> list[str]:
        """The right answer in surface forms the grader does not accept (each scores 0 on `row`).

        The tiny model is warm-started on these as well as on `reference`, so that, like a real base
        model, it often knows the answer but misses the graded format; reward-driven training then
        has a format (and some skill) to learn that carries over to held-out prompts."""
        return []

    # --- grading ----------------------------------------------------------------------------
    @abstractmethod
    def score(self, completion: str, row: dict[str, Any]) -> float:
        """Evaluation correctness in [0, 1]. Never raises, whatever `completion` holds."""

    def is_formatted(self, completion: str) -> bool:
        """Whether the completion has a parseable answer (for the optional format bonus)."""
        return False

    def reward(self, completion: str, row: dict[str, Any]) -> float:
        """Training reward: the score, plus `format_bonus` for a parseable answer if configured."""
        bonus = self.format_bonus if self.format_bonus and self.is_formatted(completion) else 0.0
        return self.score(completion, row) + bonus


def raw_field(raw: dict[str, Any], field: str, typ: type | tuple[type, ...], index: int) -> Any:
    """`raw[field]` checked against `typ`; a RowError naming the row and field otherwise.

    Columnar files store a field absent from one row as null, so None counts as missing."""
    value = raw.get(field)
    if value is None:
        raise RowError(f"row {index}: missing field {field!r}")
    if (isinstance(value, bool) and bool not in _as_tuple(typ)) or not isinstance(value, typ):
        raise RowError(f"row {index}: field {field!r} must be {_type_names(typ)}, got {type(value).__name__}")
    return value


def int_list(raw: dict[str, Any], field: str, index: int) -> list[int]:
    """A non-empty list of int (not bool) from `raw[field]`."""
    values = raw_field(raw, field, list, index)
    if not values or not all(type(v) is int for v in values):
        raise RowError(f"row {index}: field {field!r} must be a non-empty list of int")
    return list(values)


def _as_tuple(typ: type | tuple[type, ...]) -> tuple[type, ...]:
    return typ if isinstance(typ, tuple) else (typ,)


def _type_names(typ: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in _as_tuple(typ))
