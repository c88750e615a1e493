"""benchmarks/default_learning.py: each run's gain on its task per seed, and an exit status that fails when
a findings row does not hold on every seed."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import REPO

ACCURACY = [  # checkpoint, seed, method, schedule, stage, trained_task, eval_task, accuracy
    ("base", None, "base", "-", 0, "-", "a", 0.1), ("base", None, "base", "-", 0, "-", "b", 0.2),
    *[(f"seed-{s}/es/sequential/1-a", s, "es", "sequential", 1, "a", t, acc)
      for s, accs in ((0, (0.5, 0.3)), (1, (0.4, 0.1))) for t, acc in zip("ab", accs)],
    *[(f"seed-{s}/es/sequential/2-b", s, "es", "sequential", 2, "b", t, acc)
      for s, accs in ((0, (0.2, 0.6)), (1, (0.3, 0.35))) for t, acc in zip("ab", accs)],
]


def results(tmp_path, verdicts: list[str]):
    out = tmp_path / "results"
    (out / "eval").mkdir(parents=True)
    (out / "tables").mkdir()
    pd.DataFrame(ACCURACY, columns=["checkpoint", "seed", "method", "schedule", "stage", "trained_task", "eval_task",
                                    "accuracy"]).to_csv(out / "eval" / "accuracy.csv", index=False)
    pd.DataFrame({"finding": [f"claim {i}" for i in range(len(verdicts))], "measured": "m", "threshold": "t",
                  "seeds": "2/2", "verdict": verdicts}).to_csv(out / "tables" / "findings.csv", index=False)
    for task in "ab":  # disjoint splits
        (out / "data" / task).mkdir(parents=True)
        (out / "data" / task / "train.jsonl").write_text(json.dumps({"q": f"{task}1"}) + "\n")
        (out / "data" / task / "test.jsonl").write_text(json.dumps({"q": f"{task}2"}) + "\n")
    return out


def run(monkeypatch, capsys, out) -> tuple[int, list[dict]]:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from default_learning import main

    with pytest.raises(SystemExit) as stop:
        main(["--results", str(out)])
        raise SystemExit(0)
    return stop.value.code, [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_gains_per_seed_start_from_the_previous_stage(tmp_path, monkeypatch, capsys):
    code, lines = run(monkeypatch, capsys, results(tmp_path, ["holds", "holds"]))
    assert code == 0
    gains = {(g["seed"], g["stage"]): g for g in lines if g["kind"] == "gain"}
    assert gains[(0, 1)]["started_from"] == "base" and gains[(0, 1)]["test_gain"] == pytest.approx(0.4)
    assert gains[(1, 2)]["started_from"] == "seed-1/es/sequential/1-a"
    assert gains[(1, 2)]["test_gain"] == pytest.approx(0.25)  # b: 0.1 after stage 1, 0.35 after stage 2
    summary = next(g for g in lines if g["kind"] == "gain_summary" and g["stage"] == 2)
    assert (summary["test_gain_min"], summary["test_gain_max"]) == pytest.approx((0.25, 0.3))


@pytest.mark.parametrize("verdict", ["mixed", "does not hold", "not measured"])
def test_exits_1_unless_every_row_holds_on_every_seed(tmp_path, monkeypatch, capsys, verdict):
    code, lines = run(monkeypatch, capsys, results(tmp_path, ["holds", verdict]))
    assert code == 1 and lines[-1] == {"kind": "failed", "claims": ["claim 1"]}
