"""The other studies' tables and figures from small synthetic inputs with known answers: per-prompt rewards,
the test curve and its best iteration (ES with LoRA), accuracy along training at cumulative cost and time to
accuracy (LBES vs ES)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from esft.cli import main
from esft.errors import EsftError
from esft.evaluate.curves import accuracy_curve
from esft.evaluate.prompts import prompt_rewards
from esft.evaluate.test_curve import at_best, curve_points, curve_rewards, summarise
from esft.io import write_json, write_jsonl
from esft.plots import figures, style, tables

PNG = b"\x89PNG\r\n\x1a\n"
TEST_ROWS = [{"prompt": "What is the capital of France?", "target": "Paris"}, {"prompt": "Solve: 6 * 7 =", "target": "42"}]


def _records(seconds: list[float], tokens: list[int]) -> list[dict]:
    return [{"iteration": i, "seconds": s, "tokens": t, "rollouts": 4, "reward_mean": -float(i)}
            for i, (s, t) in enumerate(zip(seconds, tokens))]


def _curves() -> pd.DataFrame:
    """gsm8k: es reaches 0.8 at iteration 20 (200 s), lbes peaks at 0.75 at iteration 10 (30 s);
    countdown: nobody answers anything."""
    points = {"es": [(0, 0.0, 0, 0.1), (10, 100.0, 1000, 0.5), (20, 200.0, 2000, 0.8)],
              "lbes": [(0, 0.0, 0, 0.1), (10, 30.0, 300, 0.75), (20, 60.0, 600, 0.7)]}
    rows = [{"method": m, "task": "gsm8k", "iteration": k, "seconds": s, "tokens": t, "rollouts": 0, "accuracy": a,
             "point": "replayed"} for m, pts in points.items() for k, s, t, a in pts]
    rows += [{**r, "task": "countdown", "accuracy": 0.0} for r in rows]
    return pd.DataFrame(rows)


def test_time_to_accuracy_first_point_at_the_target():
    df = tables.time_to_accuracy(_curves(), fraction=0.9).set_index(["task", "method"])
    # target 0.9 x best 0.8 = 0.72: es first reaches it at 20 (200 s, 2000 tokens), lbes at 10 (30 s, 300 tokens)
    assert df.loc[("gsm8k", "es"), "target"] == pytest.approx(0.72)
    assert df.loc[("gsm8k", "es"), ["iteration", "seconds", "tokens", "status"]].tolist() == [20, 200.0, 2000, "reached"]
    assert df.loc[("gsm8k", "lbes"), ["iteration", "seconds", "tokens", "status"]].tolist() == [10, 30.0, 300, "reached"]
    assert df.loc[("gsm8k", "lbes"), "best"] == 0.75
    assert (df.loc["countdown", "status"] == "best is 0").all() and df.loc["countdown", "seconds"].isna().all()


def test_time_to_accuracy_absolute_target_not_reached_and_base_reaching_it():
    df = tables.time_to_accuracy(_curves(), fraction=0.9, targets={"gsm8k": 0.78}).set_index(["task", "method"])
    assert df.loc[("gsm8k", "es"), "iteration"] == 20
    lbes = df.loc[("gsm8k", "lbes")]
    assert lbes["status"] == "not reached" and pd.isna(lbes["iteration"]) and math.isnan(lbes["seconds"])
    # a target the base model already meets is reached at iteration 0, at no cost
    base = tables.time_to_accuracy(_curves(), fraction=0.9, targets={"gsm8k": 0.1}).set_index(["task", "method"])
    assert base.loc[("gsm8k", "lbes"), ["iteration", "seconds", "tokens"]].tolist() == [0, 0.0, 0]


def test_time_to_accuracy_table_prints_missing_costs_as_dashes(tmp_path):
    df = tables.time_to_accuracy(_curves(), fraction=0.9, targets={"gsm8k": 0.78})
    paths = [tmp_path / f"t.{ext}" for ext in ("csv", "md", "tex")]
    tables.write_table(df, paths[0], paths[1], ".3f", paths[2])
    md, tex = paths[1].read_text(), paths[2].read_text()
    assert "| not reached" in md and "nan" not in md and "<NA>" not in md
    assert "\\toprule" in tex and "gsm8k & lbes & 0.780 & 0.750 & -- & -- & -- & not reached" in tex
    assert "\\begin{tabular}{rllrrrrrl}" in tex  # numbers (the seed first) right-aligned where they stand
    csv = pd.read_csv(paths[0])
    assert csv["tokens"].iloc[0] == 2000 and pd.isna(csv["tokens"].iloc[1])


def test_accuracy_curve_places_points_at_cumulative_cost():
    records = _records([1.0, 2.0, 3.0], [10, 20, 30])
    df = accuracy_curve("lbes/single/1-gsm8k", records, 0.25, {1: 0.5, 3: 0.75})
    assert df[["iteration", "seconds", "tokens", "rollouts", "accuracy", "point"]].values.tolist() == [
        [0, 0.0, 0, 0, 0.25, "base"], [1, 1.0, 10, 4, 0.5, "replayed"], [3, 6.0, 60, 12, 0.75, "final"]]
    assert set(df["method"]) == {"lbes"} and set(df["task"]) == {"gsm8k"}
    with pytest.raises(EsftError, match="outside 1..3"):
        accuracy_curve("lbes/single/1-gsm8k", records, 0.25, {4: 0.5})


def test_accuracy_curves_command_reads_final_and_replayed_points(tmp_path):
    write_json(tmp_path / "base.json", {"gsm8k": {"accuracy": 0.1, "n": 8, "tokens": 1}})
    write_jsonl(tmp_path / "run.jsonl", _records([1.0, 2.0], [10, 20]))
    write_json(tmp_path / "k1.json", {"gsm8k": {"accuracy": 0.3, "n": 8, "tokens": 1}})
    write_json(tmp_path / "final.json", {"gsm8k": {"accuracy": 0.5, "n": 8, "tokens": 1},
                                         "countdown": {"accuracy": 0.9, "n": 8, "tokens": 1}})
    label = "es/single/1-gsm8k"
    main(["accuracy-curves", "--base-accuracy", str(tmp_path / "base.json"), "--runs", f"{label}={tmp_path}/run.jsonl",
          "--points", f"{label}@final={tmp_path}/final.json", f"{label}@1={tmp_path}/k1.json",
          "--out", str(tmp_path / "curves.csv")])
    df = pd.read_csv(tmp_path / "curves.csv")
    assert df[["iteration", "seconds", "tokens", "accuracy"]].values.tolist() == [[0, 0, 0, 0.1], [1, 1, 10, 0.3],
                                                                                 [2, 3, 30, 0.5]]


def _completions(tmp_path, texts: dict[str, list[str]]) -> dict[str, str]:
    paths = {}
    for label, completions in texts.items():
        path = tmp_path / label.replace("/", "_") / "completions.jsonl"
        write_jsonl(path, [{"task": "conciseness", "index": i, "completion": c, "score": 0.0}
                           for i, c in enumerate(completions)]
                    + [{"task": "boolq", "index": 0, "completion": "x", "score": 0.0}])
        paths[label] = str(path)
    return paths


def test_prompt_rewards_recompute_the_task_reward(tmp_path):
    data = tmp_path / "data"
    write_jsonl(data / "test.jsonl", TEST_ROWS)
    files = _completions(tmp_path, {"base": ["The capital is Paris.", "42"], "es_lora/single/1-conciseness": ["Pa", "4"]})
    df = prompt_rewards(files, {"conciseness": data}, {"conciseness": {}})
    # −|len − len(target)| in characters: 21 vs 5, 2 vs 2, 2 vs 5, 1 vs 2; other tasks' completions are left out
    assert df["reward"].tolist() == [-16.0, 0.0, -3.0, -1.0]
    assert df["method"].tolist() == ["base", "base", "es_lora", "es_lora"] and set(df["task"]) == {"conciseness"}
    assert df["prompt"].tolist()[:2] == [r["prompt"] for r in TEST_ROWS]
    write_jsonl(data / "test.jsonl", TEST_ROWS + TEST_ROWS[:1])
    with pytest.raises(EsftError, match="2 completions of conciseness, but its test split has 3 rows"):
        prompt_rewards(files, {"conciseness": data}, {"conciseness": {}})


def test_prompt_rewards_by_iteration_need_every_row_at_every_iteration(tmp_path):
    data = tmp_path / "data"
    write_jsonl(data / "test.jsonl", TEST_ROWS)
    curve = tmp_path / "curve.jsonl"
    records = [{"iteration": k, "task": "conciseness", "index": i, "completion": c, "score": 0.0}
               for k, texts in ((10, ["Paris", "42"]), (20, ["P", "4"])) for i, c in enumerate(texts)]
    write_jsonl(curve, records)
    df = prompt_rewards({"seed-3/es/single/1-conciseness": curve}, {"conciseness": data}, {}, by="iteration")
    assert df[["iteration", "reward"]].values.tolist() == [[10, 0.0], [10, 0.0], [20, -4.0], [20, -1.0]]
    assert set(df["seed"]) == {3}
    write_jsonl(curve, records[:-1])
    with pytest.raises(EsftError, match="1 completions of conciseness at iteration 20, but its test split has 2"):
        prompt_rewards({"es/single/1-conciseness": curve}, {"conciseness": data}, {}, by="iteration")


def test_curve_points_every_k_iterations_and_the_last():
    assert curve_points(25, 10) == [10, 20, 25] and curve_points(20, 10) == [10, 20]
    assert curve_points(2, 1) == [1, 2] and curve_points(3, 10) == [3] and curve_points(0, 10) == []


def _curve(tmp_path, label: str, rewards: dict[int, list[int]]) -> str:
    """A test-curve file whose completions are |r| characters longer than TEST_ROWS' targets (reward r <= 0)."""
    path = tmp_path / f"{label.replace('/', '_')}.jsonl"
    write_jsonl(path, [{"iteration": k, "task": "conciseness", "index": i, "completion": "x" * (len(row["target"]) - r),
                        "score": 0.0} for k, rs in rewards.items() for i, (row, r) in enumerate(zip(TEST_ROWS, rs))])
    return str(path)


def test_best_iteration_is_the_highest_mean_test_reward_earliest_of_equals(tmp_path):
    """The blog's rule: es is best at 20 (mean −1), es_lora at 10 (−2 ties 30's −2: the earliest); the base
    (mean −8) is never a candidate, and the table reports each at its best and at its end."""
    data = tmp_path / "data"
    write_jsonl(data / "test.jsonl", TEST_ROWS)
    base = tmp_path / "base.jsonl"
    write_jsonl(base, [{"task": "conciseness", "index": i, "completion": "x" * (len(r["target"]) + 8), "score": 0.0}
                       for i, r in enumerate(TEST_ROWS)])
    curves = {"seed-0/es/single/1-conciseness": _curve(tmp_path, "es", {10: [-4, -4], 20: [0, -2], 30: [-3, -3]}),
              "seed-0/es_lora/single/1-conciseness": _curve(tmp_path, "lora", {10: [-1, -3], 20: [-5, -5], 30: [-2, -2]})}
    rewards = curve_rewards(base, curves, {"conciseness": data}, {})
    summary = summarise(rewards)
    best = summary[summary["best"]].set_index("method")
    assert best["iteration"].to_dict() == {"es": 20, "es_lora": 10} and best["reward"].to_dict() == {"es": -1, "es_lora": -2}
    assert summary.loc[summary["method"] == "base", ["iteration", "reward", "best"]].values.tolist() == [[0, -8.0, False]]
    chosen = at_best(rewards, summary)
    assert chosen.groupby("method")["iteration"].unique().map(list).to_dict() == {"base": [0], "es": [20], "es_lora": [10]}
    assert chosen.loc[chosen["method"] == "es", "reward"].tolist() == [0.0, -2.0]
    table = tables.lora_rewards(summary).set_index("method")
    assert table.loc["es", ["best_iteration", "reward", "total", "final_iteration", "final_reward"]].tolist() == \
        [20, -1.0, -2.0, 30, -3.0]
    assert table.loc["es", "sem"] == pytest.approx(1.0)  # std of (0, −2) / √2
    assert table.loc["base", ["best_iteration", "final_iteration", "reward"]].tolist() == [0, 0, -8.0]


def test_study_figures_write_png_and_pdf(tmp_path):
    rewards = pd.DataFrame([{"checkpoint": c, "method": c.split("/")[0], "task": "conciseness", "index": i,
                             "prompt": r["prompt"], "reward": -float(i + len(c) % 3), "score": 0.5,
                             "iteration": 0 if c == "base" else 3}
                            for c in ("base", "es/single/1-conciseness", "es_lora/single/1-conciseness")
                            for i, r in enumerate(TEST_ROWS)])
    curves = pd.DataFrame([{"checkpoint": c, "seed": pd.NA, "method": c.split("/")[0], "task": "conciseness",
                            "trained_task": "-" if c == "base" else "conciseness", "iteration": k, "reward": -float(k),
                            "best": k == 3} for c, ks in (("base", [0]), ("es/single/1-conciseness", [3, 5]),
                                                          ("es_lora/single/1-conciseness", [3, 5])) for k in ks])
    runs = {}
    for method in ("es", "es_lora"):
        runs[f"{method}/single/1-conciseness"] = tmp_path / f"{method}.jsonl"
        write_jsonl(runs[f"{method}/single/1-conciseness"], _records([1.0] * 5, [10] * 5))
    draws = {
        "rewards": lambda out: figures.lora_prompt_rewards(rewards, out, 50),
        "cumulative": lambda out: figures.lora_cumulative_reward(rewards, out, 50),
        "training": lambda out: figures.lora_training(runs, curves, out, 50, smooth=2),
        "cost": lambda out: figures.accuracy_vs_cost(_curves(), out, 50),
    }
    for name, draw in draws.items():
        outs = [tmp_path / f"{name}.png", tmp_path / f"{name}.pdf"]
        draw(outs)
        assert outs[0].read_bytes()[:8] == PNG and outs[1].read_bytes()[:5] == b"%PDF-", name


def test_named_variants_have_their_own_colour():
    named = ["base", "es", "grpo", "lbes", "es_lora", "es_300"]
    assert len({style.method_color(m) for m in named}) == len(named)
