"""The conciseness task of the ES-with-LoRA study: answer as briefly as the target.

Reward −|len(completion) − len(target)| in characters; the score maps it into [0, 1] as
1 / (1 + |difference|), so an exact-length answer scores 1.
"""

from __future__ import annotations

import json
import random
from importlib import resources
from typing import Any

from esft.tasks.base import Task, tail


def embedded_rows() -> dict[str, list[dict[str, str]]]:
    """The 2 train and 8 test prompts shipped with esft."""
    text = resources.files("esft.tasks").joinpath("conciseness.json").read_text(encoding="utf-8")
    return json.loads(text)


class Conciseness(Task):
    name = "conciseness"
    fields = {"prompt": str, "target": str}
    reward_label = "reward −|length − target| (characters)"

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
        """The study's own split: its 2 train and 8 test prompts (sizes beyond those are capped)."""
        rows = embedded_rows()
        return rows["train"][:n_train], rows["test"][:n_test]
