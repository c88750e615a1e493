"""Graders are a security boundary: bounded, exception-free, never executing model output."""

from __future__ import annotations

import random
import time
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esft.tasks import TASKS, get_task
from esft.tasks.countdown import MAX_EXPR_CHARS, MAX_MAGNITUDE, evaluate_expression, solve
from esft.tasks.extract import answer_letter, last_boxed
from esft.tasks.gsm8k import answer_number
from esft.tasks.math_task import answers_match

ROWS = {
    "countdown": {"numbers": [44, 19, 35], "target": 98},
    "math": {"problem": "p", "answer": "\\frac{1}{2}"},
    "chemistry": {"question": "q", "choices": ["w", "x", "y", "z"], "answer": "A"},
    "boolq": {"question": "q", "passage": "p", "answer": True},
    "gsm8k": {"question": "q", "answer": "18"},
    "conciseness": {"prompt": "p", "target": "8"},
}

ADVERSARIAL = [
    "\\boxed{44**19**35}", "\\boxed{9**9**9**9}", "\\boxed{__import__('os').system('true')}",
    "\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}", "\\boxed{" + "(" * 150 + "44+19+35" + ")" * 150 + "}",
    "x" * 1_000_000 + "\\boxed{44+19+35}", "\\boxed{1/0}", "\\boxed{44/(19-19)+35}", "\\boxed{٤٤+١٩+٣٥}",
    "\\boxed{44+19+35" * 20_000, "\\boxed{" * 100_000, "}" * 100_000, "{" * 100_000 + "\\boxed{1}",
    "\\boxed{999999999999*999999999999*999999999999*999999999999}", "\\boxed{lambda: 1}",
    "<answer>" * 50_000 + "18" + "</answer>" * 50_000, "<answer>" + "9" * 100_000 + "</answer>",
    '"answer": "' * 100_000, "answer is " * 100_000, "A " * 500_000, "\n" * 1_000_000 + "A b",
    "\\boxed{\\frac{" * 10_000, "\\boxed{" + "1" * 100_000 + "}", "\x00\udcff\\boxed{yes}", "",
]


def _all_grade(completion: object) -> None:
    """Floats from every grader; binary tasks score exactly 0 or 1 and reward it (plus their format bonus);
    conciseness rewards −gap (a whole number of characters) and scores 1/(1 + gap)."""
    for name, row in ROWS.items():
        task = get_task(name)
        score, reward = task.score(completion, row), task.reward(completion, row)
        assert type(score) is float and type(reward) is float
        if name == "conciseness":
            assert reward.is_integer() and score == 1.0 / (1.0 - reward)
        else:
            assert score in (0.0, 1.0)
            assert reward in (score, pytest.approx(score + task.format_bonus))


@pytest.mark.parametrize("completion", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_completions_are_graded_fast_without_raising(completion):
    start = time.perf_counter()
    _all_grade(completion)
    assert time.perf_counter() - start < 2.0


def test_adversarial_countdown_expressions_score_zero():
    task, row = get_task("countdown"), ROWS["countdown"]
    for completion in ADVERSARIAL:
        if completion.endswith("\\boxed{44+19+35}") and "x" in completion[:10]:
            assert task.score(completion, row) == 1.0  # the answer after a long preamble still counts
        else:
            assert task.score(completion, row) == 0.0, completion[:60]


def test_non_string_completions_score_zero():
    for completion in (None, 42, b"\\boxed{98}", ["\\boxed{98}"]):
        _all_grade(completion)
        assert get_task("countdown").score(completion, ROWS["countdown"]) == 0.0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_graders_never_raise_on_arbitrary_text(text):
    _all_grade(text)
    _all_grade("\\boxed{" + text + "}")
    _all_grade("<answer>" + text + "</answer>")


_ARITH = st.recursive(
    st.integers(min_value=0, max_value=10**6).map(str),
    lambda inner: st.tuples(inner, st.sampled_from("+-*/"), inner).map(lambda t: f"({t[0]}{t[1]}{t[2]})"),
    max_leaves=12,
)


def _exact(e: str) -> Fraction | None:
    """An independent evaluator of the fully parenthesised grammar; None on division by zero or overflow."""
    if not e.startswith("("):
        return Fraction(int(e))
    depth = 0
    for i, ch in enumerate(e):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 1 and ch in "+-*/" and e[i - 1] != "(":
            left, right = _exact(e[1:i]), _exact(e[i + 1:-1])
            if left is None or right is None or (ch == "/" and right == 0):
                return None
            value = {"+": left + right, "-": left - right, "*": left * right}[ch] if ch != "/" else left / right
            big = abs(value.numerator) > MAX_MAGNITUDE or value.denominator > MAX_MAGNITUDE
            return None if big else value
    raise AssertionError(e)


@settings(max_examples=200, deadline=None)
@given(_ARITH)
def test_countdown_evaluator_agrees_with_exact_arithmetic(expr):
    expected = _exact(expr)
    got = evaluate_expression(expr)
    if expected is None or len(expr) > MAX_EXPR_CHARS:
        assert got is None or len(expr) > MAX_EXPR_CHARS
    else:
        assert got is not None and got[0] == expected


def test_countdown_rules():
    task, row = get_task("countdown"), ROWS["countdown"]
    assert task.score("so \\boxed{(44 + 19) + 35}", row) == 1.0
    assert task.score("\\boxed{35 + 44 + 19}", row) == 1.0
    assert task.score("\\boxed{44 + 19 + 35 = 98}", row) == 0.0  # "=" is not an operator
    assert task.score("\\boxed{44 + 19 + 35 + 0}", row) == 0.0  # an extra number
    assert task.score("\\boxed{44 + 54}", row) == 0.0  # numbers not the given ones
    assert task.score("\\boxed{44 + 44 + 10}", row) == 0.0  # a number used twice
    assert task.score("\\boxed{44 \\times 2 + 10}", {"numbers": [44, 2, 10], "target": 98}) == 1.0
    assert task.score("\\boxed{(6 / 4) * 2}", {"numbers": [6, 4, 2], "target": 3}) == 1.0  # exact fractions
    assert task.score("\\boxed{1/3 + 1/3 + 1/3}", {"numbers": [1, 3, 1, 3, 1, 3], "target": 1}) == 1.0
    assert task.score("44 + 19 + 35", row) == 0.0  # no box
    assert task.is_formatted("\\boxed{1+2}") and not task.is_formatted("\\boxed{1**2}")


def test_countdown_solver_finds_solutions_that_score_one():
    task, rng = get_task("countdown"), random.Random(0)
    for _ in range(30):
        numbers = [rng.randint(1, 60) for _ in range(rng.choice([3, 4]))]
        target = rng.randint(1, 100)
        expr = solve(numbers, target)
        if expr is not None:
            assert task.score(task.reference({"numbers": numbers, "target": target}), {"numbers": numbers, "target": target}) == 1.0
    assert solve([2, 2], 5) is None
    assert solve([1] * 5, 5) is None  # beyond the solver's size bound


def test_last_boxed_nesting_and_unbalanced():
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{x} \\boxed{y") == "x"
    assert last_boxed("\\boxed{a \\boxed{b} }") == "b"
    assert last_boxed("no box") is None and last_boxed("\\boxed{") is None


@pytest.mark.parametrize("pred,truth,ok", [
    ("\\frac{1}{2}", "0.5", True), ("\\dfrac{3}{4}", "3/4", True), ("\\frac12", "\\frac{1}{2}", True),
    ("\\text{(C)}", "(C)", True), ("1,000", "1000", True), ("5.0", "5", True), ("x = 5", "5", True),
    ("90^\\circ", "90", True), ("\\$12", "12", True), ("\\left( 1, 2 \\right)", "(1,2)", True),
    ("10\\%", "10", True), ("\\sqrt{2}", "\\sqrt2", True),
    ("\\frac{1}{3}", "0.33", False), ("2", "3", False), ("\\frac{1}{0}", "1", False), ("", "0", False),
])
def test_math_answer_normalisation(pred, truth, ok):
    assert answers_match(pred, truth) is ok
    task = get_task("math")
    assert task.score(f"work... \\boxed{{{pred}}}", {"problem": "p", "answer": truth}) == float(ok)


@pytest.mark.parametrize("text,letter", [
    ('{"answer":"C"}', "C"), ("{'answer': 'b'}", "B"), ("The answer is D.", "D"), ("Answer: B", "B"),
    ("I think it is a reaction, the answer is a tricky one", None), ("a catalyst is used", None),
    ("C. A catalyst lowers the activation energy.", "C"), ("Option A is correct.", "A"),
    ("It must be B\nA mole is a unit.", "B"), ('Between A and B... {"answer":"A"}', "A"), ("(D)", "D"),
])
def test_answer_letter_cascade_never_takes_the_article(text, letter):
    assert answer_letter(text) == letter


def test_boolq_and_gsm8k_rules():
    boolq = get_task("boolq")
    for text, value in [("\\boxed{yes}", True), ("\\boxed{True}", True), ("\\boxed{1}", True),
                        ("\\boxed{\\text{No}}", False), ("\\boxed{false}", False), ("\\boxed{0}", False)]:
        assert boolq.score(text, {"question": "q", "passage": "p", "answer": value}) == 1.0
        assert boolq.score(text, {"question": "q", "passage": "p", "answer": not value}) == 0.0
    assert boolq.score("yes", {"question": "q", "passage": "p", "answer": True}) == 0.0
    gsm, row = get_task("gsm8k"), ROWS["gsm8k"]
    assert gsm.reward("<think>16-3-4=9, 9*2</think> so <answer>18</answer>", row) == pytest.approx(1.1)
    assert gsm.reward("<think>x</think><answer>$1,8</answer>", row) == pytest.approx(1.1)
    assert gsm.reward("<answer>17</answer>", row) == pytest.approx(0.1)
    assert gsm.reward("the answer is 18", row) == 0.0
    assert gsm.reward("<answer>18</answer><answer>18</answer>", row) == 0.0  # two answers: no format
    assert gsm.score("<answer>18.0</answer>", row) == 1.0 and answer_number("<answer>18 apples</answer>") is None
    assert get_task("gsm8k", format_bonus=0.0).reward("<answer>17</answer>", row) == 0.0


def test_format_bonus_is_optional_and_configurable():
    task, row = get_task("math"), ROWS["math"]
    assert task.reward("\\boxed{3}", row) == 0.0
    assert get_task("math", format_bonus=0.2).reward("\\boxed{3}", row) == pytest.approx(0.2)
    assert get_task("math", format_bonus=0.2).reward("\\boxed{1/2}", row) == pytest.approx(1.2)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_stand_in_references_score_one_and_corruptions_zero(name):
    task = get_task(name)
    train, test = task.stand_in(20, 8, seed=5)
    for row in train + test:
        assert task.score(task.reference(row), row) == 1.0
        if name != "conciseness":
            assert task.score("no answer here", row) == 0.0


@pytest.mark.parametrize("name", ["countdown", "math", "chemistry", "boolq"])
def test_plain_answers_are_right_but_ungraded(name):
    """The warm-start's plain forms carry the right answer in a format the grader does not accept."""
    task = get_task(name)
    train, test = task.stand_in(50, 20, seed=5)
    for row in train + test:
        plain = task.plain_answers(row)
        assert plain and all(task.score(text, row) == 0.0 for text in plain)


def test_unknown_task_lists_known_ones():
    from esft.errors import EsftError

    with pytest.raises(EsftError, match="known tasks: boolq, chemistry, conciseness, countdown, countdown_lbes, gsm8k, math"):
        get_task("mmlu-pro")
