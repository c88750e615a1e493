"""The conciseness task of the ES-with-LoRA study: answer as briefly as the target.

Reward −|len(completion) − len(target)| in characters; the score maps it into [0, 1] as
1 / (1 + |difference|), so an exact-length answer scores 1.
"""

from __future__ import annotations

import json
import random
from importlib import resources
from typing import Any

from esft.errors import EsftError
from esft.tasks.base import Task, tail


PROMPT_SETS = {"esft": "conciseness.json", "blog": "conciseness_blog.json"}
"""Shipped prompt sets: esft's own, and the ES-with-LoRA blog's (its code's; the file names its source)."""


def embedded_rows(prompts: str = "esft") -> dict[str, list[dict[str, str]]]:
    """The 2 train and 8 test prompts of a shipped set (`PROMPT_SETS`)."""
    if prompts not in PROMPT_SETS:
        raise EsftError(f"conciseness: unknown prompt set {prompts!r}; shipped: {', '.join(PROMPT_SETS)}")
    text = resources.files("esft.tasks").joinpath(PROMPT_SETS[prompts]).read_text(encoding="utf-8")
    rows = json.loads(text)
    return {split: rows[split] for split in ("train", "test")}


class Conciseness(Task):
    name = "conciseness"
    fields = {"prompt": str, "target": str}
    reward_label = "reward −|length − target| (characters)"
    prompt_sets = tuple(PROMPT_SETS)

    def __init__(self, format_bonus: float | None = None, prompts: str = "esft") -> None:
        super().__init__(format_bonus)
        self.prompts = prompts

    def user_prompt(self, row: dict[str, Any]) -> str:
        return row["prompt"]

    def _gap(self, completion: str, row: dict[str, Any]) -> int:
        return abs(len(tail(completion).strip()) - len(row["target"]))

    def score(self, completion: str, row: dict[str, Any]) -> float:
        return 1.0 / (1.0 + self._gap(completion, row))

    def reward(self, completion: str, row: dict[str, Any]) -> float:
        return -float(self._gap(completion, row))

    def reference(self, row: dict[str, Any]) -> str:
        return row["target"]

    def generate_rows(self, n: int, rng: random.Random) -> list[dict[str, Any]]:
        """Draws from the embedded prompts (the study fixes its prompts; there is nothing to generate)."""
        rows = embedded_rows()
        pool = rows["train"] + rows["test"]
        return [rng.choice(pool) for _ in range(n)]

    def stand_in(self, n_train: int, n_test: int, seed: int) -> tuple[list[dict], list[dict]]:
        """The study's own split: the 2 train and 8 test prompts of the task's prompt set (sizes beyond those
        are capped)."""
        rows = embedded_rows(self.prompts)
        return rows["train"][:n_train], rows["test"][:n_test]
