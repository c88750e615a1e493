"""LBES's Countdown variant (Fukuda & Kawahara, Table 4): three numbers in 1-99, a target in 1-999, the
expression in `<answer></answer>` tags after a `<think></think>` block, 0.1 format reward.

Its rows are generated, as the LBES authors generate theirs (8,192 train and 1,024 test rows in their
data/countdown3): each target is the integer value of a random expression over the three numbers, so every
row has a solution. Grading reuses Countdown's whitelisted exact evaluation; the rules of the answer's form
follow the authors' reward function (nlp-waseda/lbes, src/reward_funcs/countdown.py): exactly one think
pair and one answer pair, digits, + - * /, parentheses and spaces only, each given number used once.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from fractions import Fraction
from typing import Any

from esft.tasks.base import RowError, raw_field, tail
from esft.tasks.countdown import Countdown, evaluate_expression, solve

SYSTEM_PROMPT = (
    "# Identity\n\n"
    "You are a Mathematical Reasoning Expert specialized in solving arithmetic puzzles. Your task is to use ALL "
    "the given numbers EXACTLY ONCE with basic arithmetic operations to reach the target number.\n\n"
    "# Instructions\n\n"
    "- You MUST use each given number EXACTLY ONCE, and NO other numbers\n"
    "- Use ONLY the operations: +, -, *, /\n"
    "- Begin with your reasoning process inside <think></think> tags\n"
    "- After the reasoning, provide your final answer inside <answer></answer> tags "
    "(e.g., <answer>(1 + 2) / 3</answer>)\n"
    '- The answer content must use ONLY digits, operators, parentheses, and spaces, EXCLUDING "=" and the result'
)
"""LBES Table 4's system prompt, as in the authors' data files (checked against ../shared/peers/countdown3)."""

_FORM = re.compile(r"<think>.+</think>.*<answer>(.+?)</answer>", re.DOTALL)
_CHARS = re.compile(r"[0-9+\-*/() ]+")
NUMBERS = (1, 99)
TARGETS = (1, 999)


def answer_expression(completion: str) -> str | None:
    """The expression of a well-formed completion (one think pair, then one answer pair), or None."""
    text = tail(completion)
    if any(text.count(tag) != 1 for tag in ("<think>", "</think>", "<answer>", "</answer>")):
        return None
    m = _FORM.search(text)
    expr = m.group(1).strip() if m else ""
    return expr if _CHARS.fullmatch(expr) else None


class CountdownLbes(Countdown):
    name = "countdown_lbes"
    real_dataset = "nlp-waseda/lbes data/countdown3 (generated)"
    default_format_bonus = 0.1

    def from_raw(self, raw: dict[str, Any], index: int) -> dict[str, Any]:
        """The authors' rows: `reward_func_args` {numbers, target} (or the two fields at the top level)."""
        args = raw.get("reward_func_args") or raw
        numbers = args.get("numbers")
        if numbers is None or isinstance(numbers, str | dict):
            raise RowError(f"row {index}: field 'numbers' must be a list of int")
        return {"numbers": [int(k) for k in numbers], "target": int(raw_field(args, "target", int, index))}

    def system_prompt(self, row: dict[str, Any]) -> str | None:
        return SYSTEM_PROMPT

    def user_prompt(self, row: dict[str, Any]) -> str:
        return f"Given numbers: {', '.join(map(str, row['numbers']))}\nTarget number: {row['target']}"

    def _parsed(self, completion: str, row: dict[str, Any]) -> Fraction | None:
        expr = answer_expression(completion)
        parsed = evaluate_expression(expr) if expr is not None else None
        if parsed is None or Counter(parsed[1]) != Counter(row["numbers"]):
            return None
        return parsed[0]

    def score(self, completion: str, row: dict[str, Any]) -> float:
        return 1.0 if self._parsed(completion, row) == Fraction(row["target"]) else 0.0

    def is_formatted(self, completion: str) -> bool:
        """A think block, then one answer of digits, operators, parentheses and spaces; `reward` also needs
        the given numbers, each once, for the format reward (as the authors' reward function)."""
        return answer_expression(completion) is not None

    def reward(self, completion: str, row: dict[str, Any]) -> float:
        value = self._parsed(completion, row)
        if value is None:
            return 0.0
        return (1.0 if value == Fraction(row["target"]) else 0.0) + self.format_bonus

    def reference(self, row: dict[str, Any]) -> str:
        solution = row.get("solution") or solve(row["numbers"], row["target"])
        return f"<think>Combine the numbers.</think>\n<answer>{solution}</answer>"

    def plain_answers(self, row: dict[str, Any]) -> list[str]:
        expr = answer_expression(self.reference(row))
        return [f"{expr} = {row['target']}", f"The answer is {expr}."]

    def generate_rows(self, n: int, rng: random.Random) -> list[dict[str, Any]]:
        """Distinct (numbers, target) rows: three numbers in 1-99 joined by two random operations in a random
        order, kept when the value is an integer target in 1-999."""
        rows, seen = [], set()
        while len(rows) < n:
            numbers = [rng.randint(*NUMBERS) for _ in range(3)]
            found = _random_expression(numbers, rng)
            if found is None:
                continue
            value, expr = found
            key = (tuple(sorted(numbers)), value)
            if value.denominator == 1 and TARGETS[0] <= value <= TARGETS[1] and key not in seen:
                seen.add(key)
                rows.append({"numbers": numbers, "target": int(value), "solution": expr})
        return rows


def _random_expression(numbers: list[int], rng: random.Random) -> tuple[Fraction, str] | None:
    """(value, text) of the numbers reduced pairwise by random operations; None on a division by zero."""
    items = [(Fraction(k), str(k)) for k in numbers]
    while len(items) > 1:
        (a, ea), (b, eb) = items.pop(rng.randrange(len(items))), items.pop(rng.randrange(len(items)))
        op = rng.choice("+-*/")
        if op == "/" and b == 0:
            return None
        value = a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a / b
        items.append((value, f"({ea} {op} {eb})"))
    return items[0]
