"""Countdown: combine the given numbers with + - * / to reach the target, each number used once.

The answer is `\\boxed{expr}`. The expression is parsed with `ast` against a whitelist (integer
literals, + - * /, unary minus, parentheses) and evaluated exactly with fractions; nothing is executed.
"""

from __future__ import annotations

import ast
import random
from collections import Counter
from fractions import Fraction
from typing import Any

from esft.tasks.base import PAPER, RowError, Task, int_list, raw_field
from esft.tasks.extract import last_boxed

MAX_EXPR_CHARS = 200
MAX_LITERAL_DIGITS = 12
MAX_MAGNITUDE = 10**30
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


class _Reject(Exception):
    """The expression is outside the whitelist or its bounds."""


def _evaluate(node: ast.AST, literals: list[int]) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        if node.value >= 10**MAX_LITERAL_DIGITS:
            raise _Reject
        literals.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand, literals)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left = _evaluate(node.left, literals)
        right = _evaluate(node.right, literals)
        op = type(node.op)
        if op is ast.Add:
            value = left + right
        elif op is ast.Sub:
            value = left - right
        elif op is ast.Mult:
            value = left * right
        else:
            if right == 0:
                raise _Reject
            value = left / right
        if abs(value.numerator) > MAX_MAGNITUDE or value.denominator > MAX_MAGNITUDE:
            raise _Reject
        return value
    raise _Reject


def evaluate_expression(expr: str) -> tuple[Fraction, list[int]] | None:
    """Exact value and integer literals of a whitelisted arithmetic expression, or None."""
    if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS:
        return None
    expr = expr.replace("\\times", "*").replace("\\cdot", "*").replace("\\div", "/")
    expr = expr.replace("×", "*").replace("÷", "/").replace("−", "-")
    if not expr.isascii() or any(c not in "0123456789+-*/() \t" for c in expr):
        return None
    try:
        tree = ast.parse(expr.strip(), mode="eval")
        literals: list[int] = []
        return _evaluate(tree.body, literals), literals
    except (_Reject, SyntaxError, ValueError, RecursionError, MemoryError, TypeError):
        return None


MAX_SOLVE_NUMBERS = 4


def solve(numbers: list[int], target: int) -> str | None:
    """An expression using each number once that equals `target`, by exhaustive search; None if none.

    Only for up to MAX_SOLVE_NUMBERS numbers (the search grows factorially)."""
    if len(numbers) > MAX_SOLVE_NUMBERS:
        return None
    goal = Fraction(target)

    def search(items: list[tuple[Fraction, str]]) -> str | None:
        if len(items) == 1:
            return items[0][1] if items[0][0] == goal else None
        for i in range(len(items)):
            for j in range(len(items)):
                if i == j:
                    continue
                (a, ea), (b, eb) = items[i], items[j]
                rest = [items[k] for k in range(len(items)) if k not in (i, j)]
                candidates = [(a + b, f"({ea} + {eb})"), (a - b, f"({ea} - {eb})"), (a * b, f"({ea} * {eb})")]
                if b != 0:
                    candidates.append((a / b, f"({ea} / {eb})"))
                for value, expr in candidates:
                    found = search(rest + [(value, expr)])
                    if found is not None:
                        return found
        return None

    return search([(Fraction(n), str(n)) for n in numbers])


class Countdown(Task):
    name = "countdown"
    fields = {"numbers": list, "target": int}
    real_dataset = "Jiayi-Pan/Countdown-Tasks-3to4"
    paper_system_prompt = "You are a helpful assistant. Reason step by step, then give your final answer."

    def from_raw(self, raw: dict[str, Any], index: int) -> dict[str, Any]:
        """`Jiayi-Pan/Countdown-Tasks-3to4` rows: `nums` (list of int) and `target` (int)."""
        return {"numbers": int_list(raw, "nums", index), "target": raw_field(raw, "target", int, index),
                "prompt_style": PAPER}

    def validate_row(self, row: Any, index: int) -> None:
        super().validate_row(row, index)
        if not row["numbers"] or not all(type(n) is int for n in row["numbers"]):
            raise RowError(f"row {index}: field 'numbers' must be a non-empty list of int")

    def user_prompt(self, row: dict[str, Any]) -> str:
        if row.get("prompt_style") == PAPER:
            nums = ", ".join(str(n) for n in row["numbers"])
            return (
                f"Using the numbers [{nums}], create an equation that equals {row['target']}. You can use "
                "basic arithmetic operations (+, -, *, /) and each number must be used exactly once. "
                "Show your reasoning, then put only the final expression (without '=' and the result) in "
                "\\boxed{}, for example \\boxed{(1 + 2) / 3}."
            )
        nums = " ".join(str(n) for n in row["numbers"])
        return f"Make {row['target']} from {nums} with + - * /, each number once. Answer \\boxed{{expr}}."

    def score(self, completion: str, row: dict[str, Any]) -> float:
        expr = last_boxed(completion)
        if expr is None:
            return 0.0
        parsed = evaluate_expression(expr)
        if parsed is None:
            return 0.0
        value, literals = parsed
        if Counter(literals) != Counter(row["numbers"]):
            return 0.0
        return 1.0 if abs(value - Fraction(row["target"])) <= Fraction(1, 10**6) else 0.0

    def is_formatted(self, completion: str) -> bool:
        expr = last_boxed(completion)
        return expr is not None and evaluate_expression(expr) is not None

    def reference(self, row: dict[str, Any]) -> str:
        solution = row.get("solution") or solve(row["numbers"], row["target"])
        if solution is None:
            raise RowError(f"countdown: no solution for {row['numbers']} -> {row['target']}")
        return f"\\boxed{{{solution}}}"

    def plain_answers(self, row: dict[str, Any]) -> list[str]:
        expr = self.reference(row)[len("\\boxed{"):-1]
        return [f"{expr} = {row['target']}", f"The answer is {expr}."]

    def generate_rows(self, n: int, rng: random.Random) -> list[dict[str, Any]]:
        """Solvable tasks: three numbers 1-9 joined left to right by random + - * (the solution)."""
        rows = []
        while len(rows) < n:
            numbers = [rng.randint(1, 9) for _ in range(3)]
            ops = [rng.choice("+-*") for _ in range(2)]
            solution = f"{numbers[0]}{ops[0]}{numbers[1]}{ops[1]}{numbers[2]}"
            if ops[0] in "+-" and ops[1] == "*":
                solution = f"({numbers[0]}{ops[0]}{numbers[1]})*{numbers[2]}"
            target = evaluate_expression(solution)[0]
            if target.denominator != 1 or target <= 0:
                continue
            rows.append({"numbers": numbers, "target": int(target), "solution": solution})
        return rows
