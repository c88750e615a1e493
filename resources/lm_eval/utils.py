"""Prompt and scoring of the generative MMLU task: the chemistry task's paper prompt and grader, reused; the
short prompt is the stand-in knowledge questions' (a bare letter, which the grader's last fallback reads)."""

from __future__ import annotations

from typing import Any

from esft.tasks import knowledge
from esft.tasks.base import PAPER
from esft.tasks.chemistry import LETTERS, Chemistry

_GRADER = Chemistry()


def _row(doc: dict[str, Any]) -> dict[str, Any]:
    return {"question": doc["question"], "choices": doc["choices"], "answer": LETTERS[doc["answer"]]}


def paper_prompt(doc: dict[str, Any]) -> str:
    return _GRADER.user_prompt({**_row(doc), "prompt_style": PAPER})


def short_prompt(doc: dict[str, Any]) -> str:
    return knowledge.short_prompt(doc["question"], doc["choices"])


def target(doc: dict[str, Any]) -> str:
    return LETTERS[doc["answer"]]


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """acc: the extracted letter is the answer; answered: some letter could be extracted at all."""
    return {"acc": _GRADER.score(results[0], _row(doc)), "answered": float(_GRADER.is_formatted(results[0]))}
