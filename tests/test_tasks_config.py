"""Every shipped config validates; the tasks section knows every registered task and the hf keys."""

from __future__ import annotations

import copy

import pytest
import yaml

from conftest import REPO
from esft.config import ConfigError, load_config, validate_config
from esft.tasks import TASKS

SCHEMA = REPO / "config" / "schema.yaml"
CONFIGS = sorted(p for p in (REPO / "config").glob("*.yaml") if p.name != "schema.yaml")


def test_shipped_configs_include_the_paper_experiment():
    assert {"config.yaml", "paper.yaml"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_validates(path):
    load_config(path, SCHEMA)


def test_paper_config_is_the_papers_experiment():
    cfg = load_config(REPO / "config/paper.yaml", SCHEMA)
    assert cfg["model"]["source"] == "Qwen/Qwen3-4B-Instruct-2507"
    assert (cfg["runtime"]["device"], cfg["runtime"]["dtype"]) == ("cuda", "bfloat16")
    assert cfg["train"]["sequential"] == ["countdown", "math", "chemistry", "boolq"]
    es = cfg["es"]
    assert (es["population"], es["sigma"], es["alpha"], es["iterations"], es["batch_size"], cfg["seeds"],
            es["shaping"]) == (30, 0.0015, 0.00075, 100, 200, [42], "zscore")
    tasks = cfg["tasks"]
    assert {(n, t["n_train"], t["n_test"], t["max_new_tokens"], t["source"]) for n, t in tasks.items()} == {
        ("countdown", 200, 2000, 1024, "hf"), ("math", 200, 500, 1024, "hf"),
        ("chemistry", 200, 2000, 1024, "hf"), ("boolq", 200, 2000, 1024, "hf")}
    assert tasks["countdown"]["train_split"] == "train[:200]" and tasks["countdown"]["test_split"] == "train[200:2200]"
    assert tasks["chemistry"]["where"]["type"] == "mcq-4-choices" and "split" in tasks["chemistry"]


def test_schema_task_enums_match_the_registry():
    schema = yaml.safe_load(SCHEMA.read_text())
    assert set(schema["properties"]["tasks"]["propertyNames"]["enum"]) == set(TASKS)
    assert set(schema["properties"]["model"]["properties"]["tiny"]["properties"]["warmstart_tasks"]["items"]["enum"]) == set(TASKS)


def _default():
    return yaml.safe_load((REPO / "config/config.yaml").read_text())


def test_hf_task_needs_a_dataset_and_rejects_unknown_keys():
    cfg = _default()
    cfg["tasks"]["gsm8k"] = {"source": "hf", "train_split": "train", "test_split": "test", "n_train": 2,
                             "n_test": 2, "max_new_tokens": 8}
    with pytest.raises(ConfigError, match="tasks.gsm8k: 'dataset' is a required property"):
        validate_config(copy.deepcopy(cfg), SCHEMA)
    cfg["tasks"]["gsm8k"].update(dataset="openai/gsm8k", config_name="main", skip_bad_rows=True)
    validate_config(copy.deepcopy(cfg), SCHEMA)
    cfg["tasks"]["gsm8k"]["splits"] = "oops"
    with pytest.raises(ConfigError, match="unknown key\\(s\\) 'splits'"):
        validate_config(cfg, SCHEMA)


def test_unknown_task_in_config_lists_the_known_ones():
    cfg = _default()
    cfg["tasks"]["mmlu"] = cfg["tasks"]["math"]
    with pytest.raises(ConfigError, match="unknown key 'mmlu'.*'gsm8k'"):
        validate_config(cfg, SCHEMA)
