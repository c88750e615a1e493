"""Figures and tables from small synthetic result tables: files written, known table contents, verdicts."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import findings_defaults
from esft.io import write_json, write_jsonl
from esft.plots import figures, style, tables

PNG = b"\x89PNG\r\n\x1a\n"


def _interpolation() -> pd.DataFrame:
    return pd.DataFrame([{"schedule": "sequential", "stage": k, "trained_task": t, "lambda": lam, "task": task,
                          "accuracy": 0.5 + 0.1 * lam} for k, t in [(1, "math"), (2, "boolq")]
                         for lam in (0, 0.5, 1) for task in ("math", "boolq")])


def _probes() -> pd.DataFrame:
    return pd.DataFrame([{"schedule": "sequential", "stage": 1, "trained_task": "math", "reference": ref,
                          "direction": d, "scale": s, "distance": s * norm, "accuracy": acc}
                         for ref, norm in (("es", 10.0), ("grpo", 0.1)) for d in (ref, "random1", "random2")
                         for s in (0.0, 1.0, 2.0) for acc in [0.6 if d == ref and s == 1.0 else 0.4]])


def _probes_absolute() -> pd.DataFrame:
    """Figure 4 on the paper's absolute axis: c shared by both methods, each checkpoint's c = ‖Δ‖ added."""
    rows = []
    for ref, norm in (("es", 10.0), ("grpo", 0.1)):
        for d in (ref, "random1"):
            for c in sorted({0.0, 0.01, 0.1, 1.0, 10.0, 100.0, norm}):
                rows.append({"schedule": "sequential", "stage": 1, "trained_task": "math", "reference": ref,
                             "direction": d, "scale": c / norm, "distance": c, "axis": "absolute",
                             "accuracy": 0.6 if d == ref and c <= norm else 0.3})
    return pd.DataFrame(rows)


def test_every_figure_writes_png_and_pdf(tmp_path):
    runs = {}
    for method in ("es", "grpo"):
        path = tmp_path / f"{method}.jsonl"
        write_jsonl(path, [{"iteration": t, "reward_mean": 0.1 * t, "tokens": 100 * (1 + (method == "es")),
                            **({"fitness_max": 0.2 * t} if method == "es" else {})} for t in range(5)])
        runs[f"{method}/single/1-math"] = path
    series = pd.DataFrame({"run": "es/single/1-math", "step": [1, 2, 3], "drift_sq": [1.0, 2.0, 3.0],
                           "theory_sq": [1.1, 2.2, 3.3]})
    kinds = pd.DataFrame({"run": "es/single/1-math", "kind": ["q/k/v/o", "final norm"], "deff_ratio_median": [1.0, 0.2],
                          "deff_ratio_min": [0.9, 0.1], "deff_ratio_max": [1.1, 0.3]})
    acc = pd.DataFrame([{"checkpoint": c, "method": m, "schedule": s, "stage": k, "trained_task": tt, "eval_task": "math",
                         "accuracy": 0.5} for c, m, s, k, tt in [("base", "base", "-", 0, "-"),
                                                                ("es/sequential/1-math", "es", "sequential", 1, "math")]])
    draws = {
        "accuracy": lambda out: figures.accuracy_sequential(acc, out, 50),
        "fitness": lambda out: figures.training_fitness(runs, out, 50),
        "training": lambda out: figures.training_curves(runs, out, 50, smooth=2),
        "interpolation": lambda out: figures.interpolation(_interpolation(), ["es", "grpo"], out, 50, per_task=False),
        "probes": lambda out: figures.probes(_probes(), out, 50, random_band=True),
        "probes_absolute": lambda out: figures.probes(_probes_absolute(), out, 50),
        "drift": lambda out: figures.drift(series, kinds, out, 50, log_scale=True),
        "drift_groups": lambda out: figures.drift(series, kinds, out, 50, params=pd.DataFrame(
            {"run": "es_500/single/1-math", "parameter": ["model.layers.0.mlp.up_proj.weight", "model.norm.weight"],
             "group": ["large matrices", "norm weights"], "deff_ratio": [1.0, 0.2], "r2": [0.99, 0.5]})),
    }
    for name, draw in draws.items():
        outs = [tmp_path / f"{name}.png", tmp_path / f"{name}.pdf"]
        draw(outs)
        assert outs[0].read_bytes()[:8] == PNG and outs[1].read_bytes()[:5] == b"%PDF-", name


def test_an_extended_run_fills_the_columns_of_the_run_it_extends(tmp_path):
    """paper.yaml: countdown's ES-100 and ES-300 cells are es_500 replayed at 100 and 300 (tables.single_task
    columns {es_500: es_300}); its own 500-step checkpoint gets its own column."""
    acc = pd.DataFrame([{"checkpoint": c, "method": m, "schedule": s, "stage": k, "trained_task": t, "eval_task": t,
                         "accuracy": a} for c, m, s, k, t, a in [
        ("base", "base", "-", 0, "-", 0.1), ("es_300/single/1-math", "es_300", "single", 1, "math", 0.6),
        ("es_500/single/1-countdown", "es_500", "single", 1, "countdown", 0.8)]])
    acc = pd.concat([acc, acc.iloc[:1].assign(eval_task="countdown", accuracy=0.05)])
    for name, value in (("m100", 0.3), ("c100", 0.4), ("c300", 0.7)):
        write_json(tmp_path / f"{name}.json", {t: {"accuracy": value, "n": 10} for t in ("math", "countdown")})
    df = tables.single_task(acc, {"es_300/single/1-math": 300, "es_500/single/1-countdown": 500},
                            {"es_300/single/1-math@100": tmp_path / "m100.json",
                             "es_500/single/1-countdown@100": tmp_path / "c100.json",
                             "es_500/single/1-countdown@300": tmp_path / "c300.json"},
                            {"es_500": "es_300"}).drop(columns="seed").set_index("task")
    assert list(df.columns) == ["base", "es_300 (100 steps)", "es_300 (300 steps)", "es_300 (500 steps)"]
    assert df.loc["countdown"].tolist()[1:] == [0.4, 0.7, 0.8] and df.loc["math"].tolist()[1:3] == [0.3, 0.6]


def test_method_colours_are_fixed_and_distinct():
    """An unnamed method's colour comes from its name, not from Python's per-process salted hash (figures drawn
    by different jobs must agree), and never takes a named method's colour."""
    import os
    import subprocess
    import sys

    assert style.method_color("es") != style.method_color("grpo")
    code = "from esft.plots.style import method_color; print([method_color(m) for m in ('newmethod', 'sgd', 'pso')])"
    seen = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip() for seed in ("1", "2")}
    assert seen == {str([style.method_color(m) for m in ("newmethod", "sgd", "pso")])}
    named = set(style.METHOD_COLORS.values())
    assert not {style.method_color(m) for m in ("newmethod", "sgd", "pso", "cmaes", "x")} & named


def test_single_task_table_has_base_budgets_and_final_checkpoints(tmp_path):
    acc = pd.DataFrame([
        {"checkpoint": "base", "method": "base", "schedule": "-", "stage": 0, "trained_task": "-", "eval_task": "math",
         "accuracy": 0.2},
        {"checkpoint": "es/single/1-math", "method": "es", "schedule": "single", "stage": 1, "trained_task": "math",
         "eval_task": "math", "accuracy": 0.6},
        {"checkpoint": "grpo/single/1-math", "method": "grpo", "schedule": "single", "stage": 1,
         "trained_task": "math", "eval_task": "math", "accuracy": 0.55},
    ])
    write_json(tmp_path / "b.json", {"math": {"accuracy": 0.4, "n": 10}})
    df = tables.single_task(acc, {"es/single/1-math": 300, "grpo/single/1-math": 20},
                            {"es/single/1-math@100": tmp_path / "b.json"})
    assert list(df.columns) == ["task", "seed", "base", "es (100 steps)", "es (300 steps)", "grpo (20 steps)"]
    assert df.drop(columns="seed").iloc[0].tolist() == ["math", 0.2, 0.4, 0.6, 0.55]
    tables.write_table(df, tmp_path / "t.csv", tmp_path / "t.md", ".2f", tmp_path / "t.tex")
    tex = (tmp_path / "t.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "0.40" in tex
    assert "| task" in (tmp_path / "t.md").read_text()


CFG = findings_defaults()


def test_findings_verdicts_and_numbers():
    deltas = pd.DataFrame({"schedule": "sequential", "stage": [1, 2], "task": ["a", "b"], "ratio": [95.0, 12.0],
                           "cosine": [0.01, -0.2]})
    # a path whose midpoint lies 0.02 below the endpoints' line
    interpolation = pd.DataFrame({"schedule": "sequential", "stage": 1, "trained_task": "a", "task": "a",
                                  "lambda": [0.0, 0.5, 1.0], "accuracy": [0.4, 0.38, 0.4]})
    fits = pd.DataFrame({"run": ["es/single/1-a", "grpo/single/1-a"], "theory": ["yes", "no ES step size in the run log"],
                         "r2": [0.99, 0.5], "slope_ratio": [1.1, float("nan")], "rate_ratio": [1.0, 0.6]})
    df = tables.findings(["es", "grpo"], CFG, deltas=deltas, interpolation=interpolation, drift_fits=fits,
                         probes=_probes()).set_index("finding")
    measured = df[df["verdict"] != "not measured"]
    assert measured["verdict"].to_dict() == {
        "es update norm >> grpo norm (Table 3)": "holds", "es and grpo deltas near-orthogonal": "does not hold",
        "no barrier on the linear path es -> grpo (Figure 3)": "holds",
        "es direction beats random directions on the trained task at its norm (Figure 4)": "holds",
        "es drift linear in steps, slope ~ a^2 D/N (Figure 6)": "holds",
        "grpo drift not linear in steps: it slows down (Figure 6)": "holds"}
    assert "0.2" in measured["measured"].iloc[1] and "12" in measured["measured"].iloc[0]
    assert "0.02" in df.loc["no barrier on the linear path es -> grpo (Figure 3)", "measured"]
    empty = tables.findings(["es", "grpo"], CFG)
    assert set(empty["verdict"]) == {"not measured"}


def test_norm_ratio_table_keeps_sequential_stages_in_order():
    deltas = pd.DataFrame({"schedule": ["sequential", "single", "sequential"], "stage": [2, 1, 1],
                           "task": ["b", "c", "a"], "ratio": [1.0, 2.0, 3.0]})
    assert tables.norm_ratio(deltas)["task"].tolist() == ["a", "b"]


@pytest.mark.parametrize("bad", [[0.25, 0.5, 1.0], [0.0, 0.5]])
def test_interpolation_grid_without_endpoints_is_a_config_error(bad):
    import yaml

    from conftest import REPO
    from esft.config import ConfigError, validate_config

    config = yaml.safe_load((REPO / "tests/data/small.yaml").read_text())
    config["geometry"] = {"interpolation": {"grid": bad}}
    with pytest.raises(ConfigError, match="^config error: geometry.interpolation.grid"):
        validate_config(config, REPO / "config/schema.yaml")


def test_pretraining_loss_figure_from_a_synthetic_run_table(tmp_path):
    """ES against AdamW on one run: loss against step and tokens scored; a run without `loss` is named."""
    runs = {}
    for method, per_step in (("es", 65 * 100), ("adamw", 100)):
        path = tmp_path / f"{method}.jsonl"
        write_jsonl(path, [{"iteration": t, "loss": 4.6 - 0.1 * t, "prompt_tokens": per_step} for t in range(6)])
        runs[f"{method}/single/1-conciseness"] = path
    outs = [tmp_path / "pretraining_loss.png", tmp_path / "pretraining_loss.pdf"]
    figures.pretraining_loss(runs, outs, 50, smooth=2, log_tokens=True)
    assert outs[0].read_bytes()[:8] == PNG and outs[1].read_bytes()[:5] == b"%PDF-"
    write_jsonl(tmp_path / "task.jsonl", [{"iteration": 0, "prompt_tokens": 1}])
    with pytest.raises(ValueError, match="es_task/single/1-conciseness: run.jsonl has no `loss`"):
        figures.pretraining_loss({**runs, "es_task/single/1-conciseness": tmp_path / "task.jsonl"}, outs, 50)
