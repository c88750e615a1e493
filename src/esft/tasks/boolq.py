"""Yes/no questions about a passage (BoolQ): `\\boxed{yes}` or `\\boxed{no}`.

The offline stand-in compares two numbers stated in the passage, in the same row schema.
"""

from __future__ import annotations

import random
from typing import Any

from esft.tasks.base import PAPER, Task, raw_field
from esft.tasks.extract import last_boxed

YES = {"yes", "true", "1"}
NO = {"no", "false", "0"}


def parse_yes_no(completion: str) -> bool | None:
    boxed = last_boxed(completion)
    if boxed is None:
        return None
    word = boxed.strip().strip(".").lower()
    if word.startswith("\\text{") and word.endswith("}"):
        word = word[6:-1].strip()
    return True if word in YES else False if word in NO else None


class BoolQ(Task):
    name = "boolq"
    fields = {"question": str, "passage": str, "answer": bool}
    real_dataset = "google/boolq"
    paper_system_prompt = "You are a helpful assistant."

    def from_raw(self, raw: dict[str, Any], index: int) -> dict[str, Any]:
        """`google/boolq` rows: `question`, `passage`, `answer` (bool)."""
        return {"question": raw_field(raw, "question", str, index), "passage": raw_field(raw, "passage", str, index),
                "answer": raw_field(raw, "answer", bool, index), "prompt_style": PAPER}

    def user_prompt(self, row: dict[str, Any]) -> str:
        if row.get("prompt_style") == PAPER:
            question = row["question"].strip().rstrip("?")
            return (
                f"Passage: {row['passage']}\n\nQuestion: {question}?\n\nAnswer the question about the passage "
                "with yes or no. Think briefly, then put your final answer in \\boxed{yes} or \\boxed{no}."
            )
        return f"{row['passage']} Question: {row['question']}? Answer \\boxed{{yes/no}}."

    def score(self, completion: str, row: dict[str, Any]) -> float:
        return 1.0 if parse_yes_no(completion) is row["answer"] else 0.0

    def is_formatted(self, completion: str) -> bool:
        return parse_yes_no(completion) is not None

    def reference(self, row: dict[str, Any]) -> str:
        return "\\boxed{yes}" if row["answer"] else "\\boxed{no}"

    def plain_answers(self, row: dict[str, Any]) -> list[str]:
        # a whole sentence inside the box is no yes/no for the grader
        return ["Yes." if row["answer"] else "No.", "\\boxed{Yes, it is.}" if row["answer"] else "\\boxed{No, it is not.}"]

    def generate_rows(self, n: int, rng: random.Random) -> list[dict[str, Any]]:
        rows = []
        for _ in range(n):
            x, y = rng.sample(range(0, 50), 2)
            rows.append(
                {"passage": f"x is {x} and y is {y}.", "question": "is x greater than y", "answer": x > y}
            )
        return rows
