"""MATH-style answers: the last \\boxed{...}, LaTeX-normalised, compared as strings then as numbers.

The offline stand-in is two-digit arithmetic without carries (`What is 23 + 5?`) with the same row schema and grader.
"""

from __future__ import annotations

import random
import re
from fractions import Fraction
from typing import Any

from esft.tasks.base import PAPER, Task, raw_field
from esft.tasks.extract import last_boxed

MAX_NUMBER_CHARS = 40

_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_FRAC_DIGITS = re.compile(r"\\[dt]?frac(\d)(\d)")
_ASSIGNMENT = re.compile(r"^[A-Za-z]\s*=\s*(?=\S)")
_DROP = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\$", "$", "\\%", "%", "^\\circ", "^{\\circ}",
         "\\displaystyle")


def normalize(answer: str) -> str:
    """Strip LaTeX wrappers and spacing so that equivalent spellings compare equal as strings."""
    s = answer.strip()
    for _ in range(3):
        s = _WRAPPERS.sub(r"\1", s)
    for token in _DROP:
        s = s.replace(token, "")
    s = _FRAC.sub(r"(\1)/(\2)", s)
    s = _FRAC_DIGITS.sub(r"(\1)/(\2)", s)
    s = _ASSIGNMENT.sub("", s)
    s = s.replace(" ", "").replace("{", "").replace("}", "")
    s = s.rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    return s


def to_number(s: str) -> Fraction | None:
    """Parse `a`, `a.b`, `a/b`, `(a)/(b)` into an exact fraction; None otherwise."""
    if len(s) > MAX_NUMBER_CHARS:
        return None
    m = re.fullmatch(r"\(?(-?\d+(?:\.\d+)?)\)?(?:/\(?(-?\d+(?:\.\d+)?)\)?)?", s)
    if not m:
        return None
    num = Fraction(m.group(1))
    if m.group(2) is None:
        return num
    den = Fraction(m.group(2))
    return None if den == 0 else num / den


def answers_match(predicted: str, truth: str) -> bool:
    p, t = normalize(predicted), normalize(truth)
    if p == t:
        return True
    pn, tn = to_number(p), to_number(t)
    return pn is not None and tn is not None and pn == tn


class Math(Task):
    name = "math"
    fields = {"problem": str, "answer": str}
    real_dataset = "nlile/hendrycks-MATH-benchmark"
    paper_system_prompt = "You are a helpful assistant."

    def from_raw(self, raw: dict[str, Any], index: int) -> dict[str, Any]:
        """`nlile/hendrycks-MATH-benchmark` rows: `problem`, `answer`, plus `level` and `subject` kept."""
        row = {"problem": raw_field(raw, "problem", str, index), "answer": raw_field(raw, "answer", str, index),
               "prompt_style": PAPER}
        row.update({k: raw[k] for k in ("level", "subject", "unique_id") if raw.get(k) is not None})
        return row

    def user_prompt(self, row: dict[str, Any]) -> str:
        if row.get("prompt_style") == PAPER:
            return f"{row['problem']}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
        return f"{row['problem']} Answer \\boxed{{}}."

    def score(self, completion: str, row: dict[str, Any]) -> float:
        predicted = last_boxed(completion)
        return 1.0 if predicted is not None and answers_match(predicted, row["answer"]) else 0.0

    def is_formatted(self, completion: str) -> bool:
        return last_boxed(completion) is not None

    def reference(self, row: dict[str, Any]) -> str:
        return f"\\boxed{{{row['answer']}}}"

    def plain_answers(self, row: dict[str, Any]) -> list[str]:
        # words or an equals sign inside the box are no answer for the grader; sharing the box's prefix,
        # the choice between them and the bare value is made inside the box, where reward can move it
        return [f"\\boxed{{= {row['answer']}}}", f"\\boxed{{about {row['answer']}}}"]

    def generate_rows(self, n: int, rng: random.Random) -> list[dict[str, Any]]:
        rows = []
        for _ in range(n):
            # two-digit a, one-digit b, no carry or borrow: the units digit comes from the one-digit
            # table and the tens digit is copied, so held-out prompts are new combinations of seen parts
            a, op = rng.randint(10, 99), rng.choice("+-")
            b = rng.randint(0, 9 - a % 10) if op == "+" else rng.randint(0, a % 10)
            value = a + b if op == "+" else a - b
            rows.append({"problem": f"What is {a} {op} {b}?", "answer": str(value)})
        return rows
