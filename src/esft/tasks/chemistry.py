"""Four-choice questions (SciKnowEval chemistry; MMLU uses the same cascade): `"answer":"X"`.

The offline stand-in asks which of four numbers is largest, in the same row schema.
"""

from __future__ import annotations

import random
from typing import Any

from esft.tasks.base import PAPER, RowError, Task, raw_field
from esft.tasks.extract import answer_letter

LETTERS = "ABCD"


class Chemistry(Task):
    name = "chemistry"
    fields = {"question": str, "choices": list, "answer": str}
    real_dataset = "hicai-zju/SciKnowEval"
    paper_system_prompt = "You are a helpful assistant with expert knowledge of chemistry."

    def from_raw(self, raw: dict[str, Any], index: int) -> dict[str, Any]:
        """`hicai-zju/SciKnowEval` rows: `question`, `choices` {text, label}, `answerKey`, `details`.

        Options are put in label order A-D so that the letter the model sees is the one graded."""
        choices = raw_field(raw, "choices", dict, index)
        texts, labels = choices.get("text"), choices.get("label")
        if not isinstance(texts, list) or not isinstance(labels, list) or sorted(map(str, labels)) != list(LETTERS) \
                or len(texts) != 4 or not all(isinstance(t, str) for t in texts):
            raise RowError(f"row {index}: field 'choices' must hold 4 str texts labelled A, B, C, D")
        by_label = dict(zip(labels, texts))
        row = {"question": raw_field(raw, "question", str, index), "choices": [by_label[x] for x in LETTERS],
               "answer": raw_field(raw, "answerKey", str, index), "prompt_style": PAPER}
        details = raw.get("details")
        if isinstance(details, dict) and isinstance(details.get("subtask"), str):
            row["subtask"] = details["subtask"]
        return row

    def validate_row(self, row: Any, index: int) -> None:
        super().validate_row(row, index)
        if len(row["choices"]) != 4 or not all(isinstance(c, str) for c in row["choices"]):
            raise RowError(f"row {index}: field 'choices' must be a list of 4 str")
        if row["answer"] not in LETTERS:
            raise RowError(f"row {index}: field 'answer' must be one of A, B, C, D")

    def user_prompt(self, row: dict[str, Any]) -> str:
        if row.get("prompt_style") == PAPER:
            options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, row["choices"]))
            return (
                f"{row['question']}\n\n{options}\n\nChoose the correct option. Think briefly, then end your "
                'reply with {"answer":"X"}, where X is A, B, C or D.'
            )
        options = " ".join(f"{letter}) {choice}" for letter, choice in zip(LETTERS, row["choices"]))
        return f'{row["question"]} {options} Reply {{"answer":"X"}}.'

    def score(self, completion: str, row: dict[str, Any]) -> float:
        return 1.0 if answer_letter(completion) == row["answer"] else 0.0

    def is_formatted(self, completion: str) -> bool:
        return answer_letter(completion) is not None

    def reference(self, row: dict[str, Any]) -> str:
        return f'{{"answer":"{row["answer"]}"}}'

    def plain_answers(self, row: dict[str, Any]) -> list[str]:
        # a lowercase letter outside the JSON form is no answer for the cascade ("a" is an article)
        letter = row["answer"].lower()
        return [letter, f"The answer is {letter}."]

    def generate_rows(self, n: int, rng: random.Random) -> list[dict[str, Any]]:
        rows = []
        for _ in range(n):
            values = rng.sample(range(1, 100), 4)
            best = max(range(4), key=values.__getitem__)
            rows.append(
                {
                    "question": "Which number is the largest?",
                    "choices": [str(v) for v in values],
                    "answer": LETTERS[best],
                }
            )
        return rows
