"""Task fitness: mean reward of greedy completions on a fixed set of prompts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from esft.errors import EsftError
from esft.rollout import encode_prompts, generate
from esft.tasks import Task


class FitnessError(EsftError):
    """A reward that is not a finite number, or a reward function that raised."""


class TaskFitness:
    """Scores the live model on chosen train rows; prompts are tokenised once and reused by every member."""

    def __init__(self, task: Task, rows: Sequence[dict[str, Any]], tokenizer, max_new_tokens: int,
                 generation_batch_size: int) -> None:
        self.task = task
        self.rows = list(rows)
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.generation_batch_size = generation_batch_size
        self.prompt_ids = encode_prompts(tokenizer, [task.messages(r) for r in self.rows])

    def __call__(self, model, indices: Sequence[int], member: int) -> tuple[float, int]:
        """(mean reward, generated tokens) of `model` on rows `indices`."""
        gens = generate(model, self.tokenizer, [self.prompt_ids[i] for i in indices], self.max_new_tokens,
                        self.generation_batch_size)
        total = 0.0
        for i, text in zip(indices, gens.texts):
            try:
                r = float(self.task.reward(text, self.rows[i]))
            except Exception as err:  # a grader bug must stop the run, not be averaged away
                raise FitnessError(f"member {member}, prompt {i}: reward function raised {err!r}") from err
            if not math.isfinite(r):
                raise FitnessError(f"member {member}, prompt {i}: reward is {r}")
            total += r
        return total / len(indices), gens.total_tokens
