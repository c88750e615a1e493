"""Seeds as an axis: labels, per-seed tables with their spread, findings judged on every seed, the
shipped base model, and the drift's shaping mass."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, findings_defaults
from esft.config import ConfigError, validate_config
from esft.errors import EsftError
from esft.geometry.drift import fit_run
from esft.labels import checkpoint_fields, split_seed
from esft.plots import tables

SCHEMA = REPO / "config/schema.yaml"
CFG = {**findings_defaults(), "gain_tasks_min": 2}


def test_labels_carry_an_optional_seed():
    assert split_seed("seed-12/es/sequential/3-math") == (12, "es/sequential/3-math")
    assert split_seed("es/sequential/3-math") == (None, "es/sequential/3-math")
    assert split_seed("seedless/x") == (None, "seedless/x")
    assert checkpoint_fields("seed-2/grpo/single/1-boolq") == {
        "seed": 2, "method": "grpo", "schedule": "single", "stage": 1, "trained_task": "boolq"}
    assert checkpoint_fields("base")["seed"] is None
    with pytest.raises(ValueError, match="expected base or"):
        checkpoint_fields("seed-1/es/3-math")


def test_over_seeds_keeps_each_seed_in_the_csv_and_shows_mean_and_range():
    wide = pd.DataFrame({"method": ["base", "es", "es", "es"], "stage": [0, 1, 1, 1], "seed": [None, 0, 1, 2],
                         "math": [0.1, 0.2, 0.5, 0.3]})
    csv, display = tables.over_seeds(wide, ["method", "stage"], ".2f")
    assert csv["seed"].tolist() == ["-", "0", "1", "2", "mean", "min", "max"]
    assert csv["math"].tolist()[-3:] == pytest.approx([1 / 3, 0.2, 0.5])
    assert display["math"].tolist() == ["0.10", "0.33 [0.20, 0.50]"]
    assert display["seeds"].tolist() == [1, 3]


def _accuracy(rows: list[tuple]) -> pd.DataFrame:
    """accuracy.csv rows from (label, eval_task, accuracy)."""
    return pd.DataFrame([{"checkpoint": label, **checkpoint_fields(label), "eval_task": task, "accuracy": acc}
                         for label, task, acc in rows]).astype({"seed": "Int64"})


def _learning(seed: int, es_gain: float) -> list[tuple]:
    """Two sequential stages of es and grpo in one seed; es gains `es_gain` on each, grpo 0.3."""
    rows = []
    for method, gain in (("es", es_gain), ("grpo", 0.3)):
        rows += [(f"seed-{seed}/{method}/sequential/1-a", "a", 0.1 + gain), (f"seed-{seed}/{method}/sequential/1-a", "b", 0.2),
                 (f"seed-{seed}/{method}/sequential/2-b", "a", 0.1 + gain), (f"seed-{seed}/{method}/sequential/2-b", "b", 0.2 + gain)]
    return rows


def test_findings_hold_only_on_every_seed_and_name_each_seeds_numbers():
    acc = _accuracy([("base", "a", 0.1), ("base", "b", 0.2)] + _learning(0, 0.3) + _learning(1, 0.05))
    deltas = pd.DataFrame({"seed": [0, 0, 1, 1], "schedule": "sequential", "stage": [1, 2, 1, 2], "task": ["a", "b"] * 2,
                           "ratio": [15.0, 12.0, 11.0, 30.0], "cosine": [0.01, 0.02, 0.0, 0.03]})
    df = tables.findings(["es", "grpo"], CFG, deltas=deltas, accuracy=acc).set_index("finding")
    gains = df.loc["es gains >= 0.1 on its trained task (Figure 1)"]
    assert gains["verdict"] == "mixed" and gains["seeds"] == "1/2"
    assert "seed 0: a +0.300, b +0.300" in gains["measured"] and "seed 1: a +0.050, b +0.050" in gains["measured"]
    assert df.loc["grpo gains >= 0.1 on its trained task (Figure 1)", "verdict"] == "holds"
    assert df.loc["es and grpo reach comparable accuracy on each trained task (Table 1, Figure 1)", "verdict"] == "mixed"
    ratio = df.loc["es update norm >> grpo norm (Table 3)"]
    assert ratio["verdict"] == "holds" and ratio["seeds"] == "2/2" and "seed 1: ratio min 11" in ratio["measured"]
    deltas.loc[3, "ratio"] = 9.0
    df = tables.findings(["es", "grpo"], CFG, deltas=deltas.assign(ratio=[9.0, 15.0, 8.0, 30.0]))
    assert df.set_index("finding").loc["es update norm >> grpo norm (Table 3)", "verdict"] == "does not hold"


def test_off_task_kl_compares_the_incremental_kl_of_the_tasks_a_stage_does_not_train():
    rows = []
    for method, off in (("es", 0.02), ("grpo", 0.01)):
        for stage, trained in ((1, "a"), (2, "b")):
            for task in ("a", "b", "c"):
                for reference in ("previous", "base"):
                    kl = 0.5 if task == trained else (off if reference == "previous" else 0.9)
                    rows.append({"seed": 0, "method": method, "schedule": "sequential", "stage": stage,
                                 "trained_task": trained, "eval_task": task, "reference": reference, "kl": kl})
    kl = pd.DataFrame(rows)
    assert tables.off_task_kl(kl).set_index(["method", "stage"])["kl"].to_dict() == {
        ("es", 1): 0.02, ("es", 2): 0.02, ("grpo", 1): 0.01, ("grpo", 2): 0.01}
    row = tables.findings(["es", "grpo"], CFG, kl=kl).set_index("finding").loc["es's off-task drift broader than grpo's (Figure 2)"]
    assert row["verdict"] == "holds" and "stage 2: 0.02 vs 0.01" in row["measured"]
    swapped = tables.findings(["grpo", "es"], CFG, kl=kl).set_index("finding")
    assert swapped.loc["grpo's off-task drift broader than es's (Figure 2)", "verdict"] == "does not hold"


def test_drift_effective_steps_skip_iterations_whose_members_tie():
    """An iteration where every member ties has all-zero z-scores and no step: Proposition 1 counts it as none."""
    alpha, n, size = 0.01, 4, 1000
    shaped = [[1.0, -1.0, 1.0, -1.0] if t % 2 == 0 else [0.0] * n for t in range(10)]
    records = [{"alpha": alpha, "population": n, "shaped": s, "config": {}} for s in shaped]
    steps = np.cumsum([1.0 if t % 2 == 0 else 0.0 for t in range(10)])
    drift = pd.DataFrame({"iteration": range(10), "parameter": "model.layers.0.mlp.up_proj.weight", "drift_sq": steps * alpha ** 2 * size / n})
    _, summary, params = fit_run("seed-3/es/single/1-a", drift, records, {"model.layers.0.mlp.up_proj.weight": size})
    assert summary["seed"] == 3
    assert summary["slope_ratio"] == pytest.approx(1.0) and summary["r2"] == pytest.approx(1.0)
    assert params["deff_ratio"].iloc[0] == pytest.approx(1.0)
    assert summary["rate_ratio"] == pytest.approx(1.0)  # a random walk keeps its rate


def test_drift_that_slows_down_has_a_late_rate_below_the_early_one():
    """GRPO under a linearly decaying learning rate: a random walk whose step shrinks to 0 moves its squared
    distance at a falling rate (second half about 1/7 of the first for Σ(1 − s/T)²)."""
    steps = 40
    lr = 1 - np.arange(steps) / steps
    drift = pd.DataFrame({"iteration": range(steps), "parameter": "model.norm.weight", "drift_sq": np.cumsum(lr ** 2)})
    _, summary, _ = fit_run("seed-0/grpo/single/1-a", drift, [{"iteration": t} for t in range(steps)],
                            {"model.norm.weight": 64})
    assert summary["theory"] != "yes" and summary["rate_ratio"] == pytest.approx(0.14, abs=0.02)


@pytest.fixture()
def default():
    return yaml.safe_load((REPO / "config/config.yaml").read_text())


def test_seeds_replace_the_method_seed_in_a_workflow_config(default):
    assert validate_config(copy.deepcopy(default), SCHEMA)["seeds"] == [0, 1, 2]
    config = copy.deepcopy(default)
    config["es"]["seed"] = 3
    with pytest.raises(ConfigError, match=r"^config error: es.seed is not allowed .* seeds: \(here \[0, 1, 2\]\)"):
        validate_config(config, SCHEMA)
    config = copy.deepcopy(default)
    config["seeds"] = [1, 1]
    with pytest.raises(ConfigError, match="^config error: seeds"):
        validate_config(config, SCHEMA)


def test_the_shipped_base_model_is_copied_only_for_the_build_it_is(tmp_path, default):
    """The default's prebuilt tiny model: copied with its checksum for its own config and held-out prompts, and
    refused with a one-line reason for another config, other held-out prompts or changed weights."""
    from esft.io import read_jsonl
    from esft.models import TinyModelConfig, build_base_model, copy_prebuilt, file_sha256, load_model
    from esft.tasks import get_task
    from esft.tasks.prepare import prepare_task

    shipped = REPO / default["model"]["prebuilt"]
    manifest = json.loads((shipped / "model.json").read_text())
    assert file_sha256(shipped / "model.safetensors") == manifest["weights_sha256"]
    cfg = TinyModelConfig(**default["model"]["tiny"])
    with pytest.raises(EsftError, match="other held-out prompts"):
        copy_prebuilt(shipped, tmp_path, cfg, {"a prompt"})
    other = TinyModelConfig(**{**default["model"]["tiny"], "warmstart_steps": 5})
    with pytest.raises(EsftError, match="another model.tiny config .*warmstart_steps"):
        copy_prebuilt(shipped, tmp_path, other, set())
    held_out = set()
    for name, task_cfg in default["tasks"].items():
        prepare_task(name, task_cfg, tmp_path / "data" / name)
        held_out |= {get_task(name).user_prompt(r) for r in read_jsonl(tmp_path / "data" / name / "test.jsonl")}
    manifest = build_base_model("tiny", tmp_path / "copy", default["model"]["tiny"], held_out, prebuilt=shipped)
    assert manifest["weights_sha256"] == file_sha256(tmp_path / "copy" / "model.safetensors")
    assert load_model(tmp_path / "copy")[0].num_parameters() == manifest["parameters"]
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for path in shipped.iterdir():
        (tampered / path.name).write_bytes(path.read_bytes())
    (tampered / "model.safetensors").write_bytes(b"x" + (shipped / "model.safetensors").read_bytes()[1:])
    with pytest.raises(EsftError, match="does not match the sha256"):
        build_base_model("tiny", tmp_path / "out", default["model"]["tiny"], held_out, prebuilt=tampered)
