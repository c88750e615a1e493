"""Fitness sources: task reward of greedy completions, corpus log-likelihood, and a θ-independent
random fitness (a flat landscape) for checking the random-walk theory of ES.

Every source scores all members of an iteration on the same rows (common random numbers) and stops
the run, naming the member and row, on a value that is not finite.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from esft.errors import EsftError
from esft.rollout import encode_prompts, generate, score_sequences
from esft.rollout.scoring import MAX_LENGTH, encode_texts
from esft.tasks import Task


class FitnessError(EsftError):
    """A reward that is not a finite number, or a reward function that raised."""


def checked_reward(task: Task, text: str, row: dict[str, Any], where: str) -> float:
    """The task's reward of one completion; a reward that raises or is not finite stops the run,
    naming `where` (a grader bug must stop the run, not be averaged away)."""
    try:
        r = float(task.reward(text, row))
    except Exception as err:
        raise FitnessError(f"{where}: reward function raised {err!r}") from err
    if not math.isfinite(r):
        raise FitnessError(f"{where}: reward is {r}")
    return r


class TaskFitness:
    """Scores the live model on chosen train rows; prompts are tokenised once and reused by every member."""

    generates = True
    """Its evaluations generate completions (counted as rollouts and generated tokens)."""

    def __init__(self, task: Task, rows: Sequence[dict[str, Any]], tokenizer, max_new_tokens: int,
                 generation_batch_size: int, temperature: float = 0.0, top_p: float = 1.0) -> None:
        self.task = task
        self.temperature = temperature
        self.top_p = top_p
        self.rows = list(rows)
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.generation_batch_size = generation_batch_size
        self.prompt_ids = encode_prompts(tokenizer, [task.messages(r) for r in self.rows])

    def __call__(self, model, indices: Sequence[int], member: int) -> tuple[float, int]:
        """(mean reward, generated tokens) of `model` on rows `indices`.

        Sampled generation is seeded by one draw from torch's global RNG, which the evaluator sets to the
        iteration's sampling key for every member (`esft.noise.sampling_rng`): each generation batch
        is then keyed by (run seed, iteration, batch start), the same for all members.
        """
        seed = int(torch.randint(2**63 - 1, ())) if self.temperature > 0 else None
        gens = generate(model, self.tokenizer, [self.prompt_ids[i] for i in indices], self.max_new_tokens,
                        self.generation_batch_size, self.temperature, seed, self.top_p)
        return self.score(gens.texts, indices, member), gens.total_tokens

    def prompt_tokens(self, indices: Sequence[int]) -> int:
        """Prompt tokens one member processes on rows `indices`."""
        return sum(len(self.prompt_ids[i]) for i in indices)

    def score(self, texts: Sequence[str], indices: Sequence[int], member: int) -> float:
        """Mean reward of one member's completions of rows `indices`; stops on a bad reward."""
        total = sum(checked_reward(self.task, text, self.rows[i], f"member {member}, prompt {i}")
                    for i, text in zip(indices, texts))
        return total / len(indices)


class CorpusFitness:
    """Mean token log-likelihood of fixed texts (EA4LLM): prefill only, padding masked, logits chunked
    (`esft.rollout.scoring`).

    Each text is tokenised once (`encode_texts`: followed by eos, at most `max_length` tokens); the fitness
    of a member on texts `indices` is, with `average` sample (EA4LLM eqs. 2-3), the mean over texts of each
    text's mean token log-likelihood, or with token, Σ log p(token | prefix) / (number of scored tokens), so
    long texts weigh by their tokens. Works on a freshly initialised model, i.e. pretraining.
    """

    def __init__(self, texts: Sequence[str], tokenizer, batch_size: int, max_length: int = MAX_LENGTH,
                 average: str = "sample") -> None:
        if not texts:
            raise EsftError("loglik fitness needs at least one text")
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.average = average
        self.ids = encode_texts(texts, tokenizer, max_length)

    def __call__(self, model, indices: Sequence[int], member: int) -> tuple[float, int]:
        """(mean log-likelihood as `average` says, scored tokens) of `model` on texts `indices`; member −1 is θ."""
        scores = score_sequences(model, [self.ids[i] for i in indices], [1] * len(indices),
                                 self.tokenizer.pad_token_id, self.batch_size)
        count = sum(n for _, n in scores)
        if self.average == "token":
            value = sum(s for s, _ in scores) / count
        else:
            value = sum(s / n for s, n in scores) / len(scores)
        if not math.isfinite(value):
            who = "θ" if member < 0 else f"member {member}"
            raise FitnessError(f"{who}, texts {list(indices)[:8]}: log-likelihood is {value}")
        return value, count


class RandomFitness:
    """i.i.d. standard-normal fitness per (iteration, member), seeded and independent of θ.

    An evaluator (not a model fitness): it never touches the model. On this flat landscape z-scored
    ES is a pure random walk, E||θ_T − θ_0||² = T·α²·D/N (Proposition 1).
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, iteration: int, members: Iterable[int], sigma: float,
                 indices: Sequence[int]) -> list[tuple[float, int]]:
        return [(random.Random(f"{self.seed}|random-fitness|{iteration}|{m}").gauss(0.0, 1.0), 0) for m in members]
