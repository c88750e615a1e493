"""Stand-in "knowledge" questions for the MMLU holdout: which of four words names a category.

A real base model answers MMLU in its format from pretraining, and the paper's RL tasks neither teach
that format nor its knowledge. The embedded tiny model gets the same relation: the warm-start teaches
these questions, always in their graded form (a bare letter after `Answer with the letter.`), as
pretraining knowledge; no RL task asks about words or answers with a bare letter. Warm-start and
holdout draw from disjoint halves of the question space (split by a hash of the prompt), so no holdout
item is ever a warm-start row, whatever either's seed or size.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from esft.errors import EsftError
from esft.tasks.chemistry import LETTERS  # the MMLU cascade grades these questions

CATEGORIES: dict[str, tuple[str, ...]] = {
    "color": ("red", "blue", "green", "pink", "gray", "black", "white", "brown"),
    "animal": ("cat", "dog", "cow", "horse", "mouse", "sheep", "goat", "duck"),
    "fruit": ("apple", "pear", "plum", "grape", "lemon", "mango", "peach", "lime"),
    "metal": ("iron", "gold", "tin", "zinc", "lead", "copper", "silver", "nickel"),
    "body part": ("arm", "leg", "hand", "foot", "nose", "ear", "eye", "knee"),
    "tool": ("saw", "axe", "drill", "hammer", "wrench", "rake", "spade", "chisel"),
    "vehicle": ("car", "bus", "train", "ship", "bike", "plane", "truck", "boat"),
    "instrument": ("drum", "harp", "flute", "piano", "violin", "cello", "horn", "oboe"),
}
PARTS = ("warmstart", "holdout")


def short_prompt(question: str, choices: list[str]) -> str:
    """The stand-in MMLU prompt the tiny model was warm-started on (real rows may use it too)."""
    options = " ".join(f"{letter}) {choice}" for letter, choice in zip(LETTERS, choices))
    return f"{question} {options} Answer with the letter."


def part_of(prompt: str) -> str:
    """Which half of the question space `prompt` belongs to: fixed by its text alone."""
    return PARTS[hashlib.sha256(prompt.encode()).digest()[0] % 2]


def knowledge_rows(n: int, rng: random.Random, part: str) -> list[dict[str, Any]]:
    """`n` distinct questions of `part`, in `cais/mmlu`'s schema (question, subject, choices, answer index)."""
    if part not in PARTS:
        raise EsftError(f"knowledge questions: part must be one of {', '.join(PARTS)}, got {part!r}")
    subjects = list(CATEGORIES)
    others = {subject: [w for s in subjects if s != subject for w in CATEGORIES[s]] for subject in subjects}
    rows: dict[str, dict[str, Any]] = {}
    for _ in range(100 * n):
        if len(rows) == n:
            break
        subject = subjects[len(rows) % len(subjects)]
        choices = rng.sample(others[subject], 3)
        answer = rng.randrange(4)
        choices.insert(answer, rng.choice(CATEGORIES[subject]))
        question = f"Which word names {'an' if subject[0] in 'aeiou' else 'a'} {subject}?"
        prompt = short_prompt(question, choices)
        if part_of(prompt) == part:
            rows.setdefault(prompt, {"question": question, "subject": subject, "choices": choices, "answer": answer})
    if len(rows) < n:
        raise EsftError(f"knowledge questions: the generator yields fewer than {n} distinct {part} questions")
    return list(rows.values())


def warmstart_pairs(n: int, rng: random.Random) -> list[tuple[str, str]]:
    """(user prompt, graded answer) of `n` warm-start questions: the answer is always the bare letter."""
    return [(short_prompt(r["question"], r["choices"]), LETTERS[r["answer"]]) for r in knowledge_rows(n, rng, "warmstart")]
