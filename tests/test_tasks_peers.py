"""Graders against real rows nobody on this project wrote (../shared/peers): references score 1,
corrupted answers 0. Skipped when ../shared is absent (a fresh clone)."""

from __future__ import annotations

import json
import re
from collections import Counter

import pandas as pd
import pytest

from conftest import SHARED
from esft.tasks import RowError, get_task
from esft.tasks.countdown import solve

PEERS = SHARED / "peers"


def _peer(path: str):
    if not (PEERS / path).exists():
        pytest.skip(f"{PEERS / path} is absent")
    return PEERS / path


def test_countdown_reference_solutions_score_one_and_corruptions_zero():
    rows = json.loads(_peer("countdown-qiu/countdown.json").read_text())
    task = get_task("countdown")
    outcome: Counter = Counter()
    for i, raw in enumerate(rows):
        target = float(raw["target"]) if "." in raw["target"] else int(raw["target"])
        try:
            row = task.from_raw({"nums": raw["numbers"], "target": target}, i)
        except RowError:
            outcome["non-integer target"] += 1  # 43 rows of this file; Countdown-Tasks-3to4 targets are int
            continue
        task.validate_row(row, i)
        solution = raw["solution"] or solve(row["numbers"], row["target"])
        boxed = f"<think>...</think> \\boxed{{{solution}}}"
        # the file's solutions that reuse a number or leave one out are wrong; the grader must say so
        uses_given = Counter(int(n) for n in re.findall(r"\d+", solution)) == Counter(row["numbers"])
        assert task.score(boxed, row) == float(uses_given), raw
        outcome["scores 1" if uses_given else "misuses numbers"] += 1
        assert task.score(boxed, {**row, "target": row["target"] + 1}) == 0.0
        assert task.score(boxed, {**row, "numbers": row["numbers"] + [1]}) == 0.0
        assert task.score(f"\\boxed{{{solution} + {row['numbers'][0]} - {row['numbers'][0]}}}", row) == 0.0
        assert task.score(solution, row) == 0.0  # not boxed
    assert outcome == {"scores 1": 2144, "misuses numbers": 13, "non-integer target": 43}


def test_countdown3_rows_are_solved_and_graded():
    df = pd.read_parquet(_peer("countdown3/test.parquet"))
    task = get_task("countdown")
    assert len(df) == 1024
    for i, args in enumerate(df["reward_func_args"]):
        row = task.from_raw({"nums": [int(n) for n in args["numbers"]], "target": int(args["target"])}, i)
        reference = task.reference(row)  # found by the solver: these rows carry no solution
        assert task.score(reference, row) == 1.0
        assert task.score(reference, {**row, "target": row["target"] + 1}) == 0.0
        assert task.score(reference.replace("}", " + 1}"), row) == 0.0
        assert task.score(reference.replace("\\boxed", "\\text"), row) == 0.0


def test_gsm8k_ground_truths_score_one_and_corruptions_zero():
    df = pd.read_parquet(_peer("gsm8k/test.parquet"))
    task = get_task("gsm8k")
    assert len(df) == 1319
    for i, args in enumerate(df["reward_func_args"]):
        truth = args["ground_truth"]
        row = {"question": df["prompt"][i][-1]["content"], "answer": truth.replace(",", "")}
        task.validate_row(row, i)
        good = f"<think>working</think> So the answer is <answer>{truth}</answer>."
        assert task.score(good, row) == 1.0 and task.reward(good, row) == pytest.approx(1.1)
        wrong = str(int(truth.replace(",", "")) + 1)
        bad = f"<think>working</think> <answer>{wrong}</answer>"
        assert task.score(bad, row) == 0.0 and task.reward(bad, row) == pytest.approx(0.1)
        assert task.reward(f"The answer is {truth}.", row) == 0.0


@pytest.mark.parametrize(("folder", "task"), [("countdown3", "countdown_lbes"), ("gsm8k", "gsm8k")])
def test_lbes_prompts_are_the_authors_own(folder, task):
    """LBES's Table 4 Countdown prompt and its GSM8K system prompt, word for word as in the authors' data
    files; their Countdown rows load into the countdown_lbes variant and its references earn 1 + 0.1."""
    df = pd.read_parquet(_peer(f"{folder}/test.parquet"))
    t = get_task(task)
    for i in range(0, len(df), 97):
        raw = df.iloc[i]
        system, user = raw["prompt"][0]["content"], raw["prompt"][1]["content"]
        if task == "gsm8k":
            row = {"question": user, "answer": raw["reward_func_args"]["ground_truth"]}
            assert t.messages(row)[0]["content"] == system
            continue
        row = t.from_raw(raw.to_dict(), i)
        assert [m["content"] for m in t.messages(row)] == [system, user]
        assert t.reward(t.reference(row), row) == pytest.approx(1.1)
        answer = t.reference(row).split("<answer>")[1].split("</answer>")[0]
        wrong = f"<think>x</think><answer>{answer} + 1 - 1</answer>"
        assert t.score(wrong, row) == 0.0 and t.reward(wrong, row) == 0.0  # a number used twice: no format reward
        assert t.reward(f"<answer>{answer}</answer>", row) == 0.0  # no think block


def test_lbes_countdown_rows_are_generated_as_its_paper_says():
    import random

    rows = get_task("countdown_lbes").generate_rows(300, random.Random(0))
    assert all(len(r["numbers"]) == 3 and all(1 <= n <= 99 for n in r["numbers"]) and 1 <= r["target"] <= 999
               for r in rows)
    assert len({(tuple(sorted(r["numbers"])), r["target"]) for r in rows}) == 300
