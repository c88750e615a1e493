"""GSM8K word problems as in LBES: think, then the bare number in `<answer></answer>` tags.

The answer counts only when the completion holds exactly one `<answer>...</answer>` pair around a
number; the training reward adds a 0.1 format bonus by default (1.1 for a correct answer, 0.1 for a
well-formed wrong one, as LBES). The stand-in generates one-step word problems in the same schema.
"""

from __future__ import annotations

import random
import re
from fractions import Fraction
from typing import Any

from esft.tasks.base import RowError, Task, raw_field, tail

MAX_NUMBER_CHARS = 40
SYSTEM_PROMPT = (
    "You are a reasoning model designed to think step-by-step before providing answers. Always follow this "
    "format:\n\n"
    "1. Start your response with your thinking process inside `<think></think>` tags\n"
    "2. After your thinking, provide your explanation and include the final numerical answer inside "
    "`<answer></answer>` tags\n\n"
    "In your `<think>` section:\n"
    "- Break down the problem into smaller parts\n"
    "- Consider different approaches or perspectives\n"
    "- Work through your reasoning step by step\n"
    "- Identify any assumptions you're making\n"
    "- Check your logic for potential errors\n\n"
    "Your thinking should be thorough but concise. After closing the `</think>` tag, provide your explanation "
    "and wrap the numerical answer within `<answer></answer>` tags. The answer tags should contain only the "
    "number."
)
"""LBES's GSM8K system prompt, as in the authors' data files (checked against ../shared/peers/gsm8k)."""
_NUMBER = re.compile(r"\$?\s*(-?[\d,]*\d(?:\.\d+)?)\s*\.?")


def _number(text: str) -> Fraction | None:
    text = text.strip()
    if len(text) > MAX_NUMBER_CHARS:
        return None
    m = _NUMBER.fullmatch(text)
    return Fraction(m.group(1).replace(",", "")) if m else None


def answer_number(completion: str) -> Fraction | None:
    """The number inside the only `<answer>...</answer>` pair of the completion, or None."""
    text = tail(completion)
    if text.count("<answer>") != 1 or text.count("</answer>") != 1:
        return None
    start = text.index("<answer>") + len("<answer>")
    end = text.find("</answer>", start)
    return None if end < 0 else _number(text[start:end])


class Gsm8k(Task):
    name = "gsm8k"
    fields = {"question": str, "answer": str}
    real_dataset = "openai/gsm8k"
    default_format_bonus = 0.1

    def from_raw(self, raw: dict[str, Any], index: int) -> dict[str, Any]:
        """`openai/gsm8k` rows: `question`, and `answer` whose last line is `#### <number>`."""
        solution = raw_field(raw, "answer", str, index)
        final = solution.rsplit("####", 1)[-1].strip().replace(",", "")
        if "####" not in solution or _number(final) is None:
            raise RowError(f"row {index}: field 'answer' must end with '#### <number>'")
        return {"question": raw_field(raw, "question", str, index), "answer": final}

    def validate_row(self, row: Any, index: int) -> None:
        super().validate_row(row, index)
        if _number(row["answer"]) is None:
            raise RowError(f"row {index}: field 'answer' must be a number")

    def system_prompt(self, row: dict[str, Any]) -> str | None:
        return SYSTEM_PROMPT

    def user_prompt(self, row: dict[str, Any]) -> str:
        return row["question"]

    def score(self, completion: str, row: dict[str, Any]) -> float:
        predicted = answer_number(completion)
        return 1.0 if predicted is not None and predicted == _number(row["answer"]) else 0.0

    def is_formatted(self, completion: str) -> bool:
        return answer_number(completion) is not None

    def reference(self, row: dict[str, Any]) -> str:
        return f"<think>{row.get('solution', '')}</think> The answer is <answer>{row['answer']}</answer>"

    def generate_rows(self, n: int, rng: random.Random) -> list[dict[str, Any]]:
        rows = []
        for _ in range(n):
            name = rng.choice(["Ann", "Ben", "Cleo", "Dev", "Eli", "Fay"])
            item = rng.choice(["apples", "books", "coins", "pens", "stamps"])
            a, b = rng.randint(2, 60), rng.randint(2, 40)
            if rng.random() < 0.5:
                question = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
                solution, value = f"{a} + {b} = {a + b}", a + b
            else:
                question = f"{name} buys {b} bags with {a} {item} in each. How many {item} is that in total?"
                solution, value = f"{b} * {a} = {a * b}", a * b
            rows.append({"question": question, "answer": str(value), "solution": solution})
        return rows
