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


def test_conciseness_ships_its_own_and_the_blogs_test_prompts(tmp_path):
    """tasks.conciseness.prompts: esft's 8 test prompts by default, the ES-with-LoRA blog's (its code's; the
    file names its source) with `blog`, the same 2 train prompts; other tasks have no prompt sets."""
    import json
    from importlib import resources

    from esft.errors import EsftError
    from esft.io import read_json, read_jsonl
    from esft.tasks.conciseness import embedded_rows
    from esft.tasks.prepare import prepare_task

    cfg = {"source": "embedded", "n_train": 2, "n_test": 8, "max_new_tokens": 8}
    prepare_task("conciseness", cfg, tmp_path / "esft")
    prepare_task("conciseness", {**cfg, "prompts": "blog"}, tmp_path / "blog")
    ours, blog = (read_jsonl(tmp_path / name / "test.jsonl") for name in ("esft", "blog"))
    assert ours == embedded_rows()["test"] and blog == embedded_rows("blog")["test"]
    assert [r["target"] for r in blog] == ["Paris", "84", "True", "10", "Hola", "30", "Red", "7"]
    assert blog[1]["prompt"] == "Calculate: 12×7=" and blog[3]["prompt"] == "What comes next in the sequence: 2,4,6,8, ?"
    assert sum(a != b for a, b in zip(ours, blog)) == 7  # only "What is the capital of France?" is shared
    assert read_jsonl(tmp_path / "esft" / "train.jsonl") == read_jsonl(tmp_path / "blog" / "train.jsonl")
    assert read_json(tmp_path / "blog" / "manifest.json")["prompts"] == "blog"
    source = json.loads(resources.files("esft.tasks").joinpath("conciseness_blog.json").read_text())["source"]
    assert "Bhoy1/ES_LLM_1" in source and "cvllm3.py" in source
    with pytest.raises(EsftError, match="not a prompt set"):
        prepare_task("boolq", {**cfg, "source": "synthetic", "prompts": "blog"}, tmp_path / "boolq")
    with pytest.raises(EsftError, match="unknown prompt set"):
        embedded_rows("paper")
