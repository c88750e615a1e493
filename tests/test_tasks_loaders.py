"""Real-dataset loaders, exercised offline on small local files in each dataset's real column schema."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from esft.errors import EsftError
from esft.io import read_json, read_jsonl
from esft.tasks import RowError, get_task
from esft.tasks.prepare import prepare_task


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """Keep the datasets arrow cache inside the test's temporary directory."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _parquet(path: Path, rows: list[dict]) -> str:
    pd.DataFrame(rows).to_parquet(path)
    return str(path)


def _countdown_raw(n: int) -> list[dict]:
    return [{"target": 10 + i, "nums": [i + 1, 9, 10 - (i % 3)]} for i in range(n)]


def test_countdown_first_rows_train_next_rows_test(tmp_path):
    files = _parquet(tmp_path / "train-00000-of-00001.parquet", _countdown_raw(30))
    cfg = {"source": "hf", "dataset": "parquet", "data_files": {"train": files}, "train_split": "train[:5]",
           "test_split": "train[5:25]", "n_train": 5, "n_test": 20, "max_new_tokens": 8}
    manifest = prepare_task("countdown", cfg, tmp_path / "out")
    train, test = read_jsonl(tmp_path / "out/train.jsonl"), read_jsonl(tmp_path / "out/test.jsonl")
    assert [r["target"] for r in train] == [10, 11, 12, 13, 14]
    assert [r["target"] for r in test] == list(range(15, 35))
    assert train[0] == {"numbers": [1, 9, 10], "target": 10, "prompt_style": "paper"}
    assert manifest["counts"] == {"train": 5, "test": 20} and manifest["skipped_rows"] == 0
    assert manifest["hf"]["train_split"] == "train[:5]" and manifest["hf"]["fingerprints"]
    assert read_json(tmp_path / "out/manifest.json") == manifest
    import hashlib
    assert manifest["sha256"]["test"] == hashlib.sha256((tmp_path / "out/test.jsonl").read_bytes()).hexdigest()
    task = get_task("countdown")
    msgs = task.messages(train[0])
    assert msgs[0]["role"] == "system" and "[1, 9, 10]" in msgs[1]["content"] and "\\boxed{" in msgs[1]["content"]


def test_math_train_is_stratified_by_level_and_seeded(tmp_path):
    raw = [{"problem": f"P{i}?", "solution": "s", "answer": str(i), "subject": "Algebra", "level": 1 + i % 5,
            "unique_id": f"train/{i}.json"} for i in range(60)]
    test_raw = [{"problem": f"T{i}?", "solution": "s", "answer": "\\frac{1}{2}", "subject": "Algebra",
                 "level": 3, "unique_id": f"test/{i}.json"} for i in range(12)]
    files = {"train": _parquet(tmp_path / "train.parquet", raw), "test": _parquet(tmp_path / "test.parquet", test_raw)}
    cfg = {"source": "hf", "dataset": "parquet", "data_files": files, "train_split": "train", "train_stratify": "level",
           "test_split": "test[:10]", "seed": 3, "n_train": 10, "n_test": 10, "max_new_tokens": 8}
    prepare_task("math", cfg, tmp_path / "a")
    train = read_jsonl(tmp_path / "a/train.jsonl")
    assert sorted(r["level"] for r in train) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert all(r["answer"] == str(int(r["problem"][1:-1])) for r in train)
    prepare_task("math", cfg, tmp_path / "b")
    assert (tmp_path / "a/train.jsonl").read_bytes() == (tmp_path / "b/train.jsonl").read_bytes()
    prepare_task("math", {**cfg, "seed": 4}, tmp_path / "c")
    assert (tmp_path / "a/train.jsonl").read_bytes() != (tmp_path / "c/train.jsonl").read_bytes()
    row = read_jsonl(tmp_path / "a/test.jsonl")[0]
    assert get_task("math").score("so \\boxed{0.5}", row) == 1.0
    with pytest.raises(EsftError, match="not divisible"):
        prepare_task("math", {**cfg, "n_train": 12}, tmp_path / "d")


def _sciknoweval_raw(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        rows.append({
            "question": f"Which compound {i}?", "answer": "",
            "choices": {"text": [f"c{i}-0", f"c{i}-1", f"c{i}-2", f"c{i}-3"], "label": ["A", "B", "C", "D"]},
            "answerKey": "ABCD"[i % 4], "type": "mcq-4-choices" if i % 5 else "true_or_false",
            "domain": "Chemistry", "details": {"level": "L1", "task": "t", "subtask": "s", "source": "x"},
        })
    return rows


def test_chemistry_single_split_is_divided_disjointly_with_a_seed(tmp_path):
    files = _jsonl(tmp_path / "sciknoweval_chemistry_test.jsonl", _sciknoweval_raw(50))
    cfg = {"source": "hf", "dataset": "json", "data_files": {"test": files}, "split": "test",
           "where": {"type": "mcq-4-choices"}, "seed": 7, "n_train": 10, "n_test": 30, "max_new_tokens": 8}
    manifest = prepare_task("chemistry", cfg, tmp_path / "out")
    train, test = read_jsonl(tmp_path / "out/train.jsonl"), read_jsonl(tmp_path / "out/test.jsonl")
    assert manifest["filtered_rows"] == 10 and len(train) == 10 and len(test) == 30
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    task = get_task("chemistry")
    for row in train + test:
        assert task.score(task.reference(row), row) == 1.0
        i = int(row["question"].split()[-1].rstrip("?"))
        assert row["choices"][0] == f"c{i}-0" and row["answer"] == "ABCD"[i % 4]
    prompt = task.user_prompt(train[0])
    assert '"answer":"X"' in prompt and "\nA. " in prompt
    with pytest.raises(EsftError, match="fewer than the 31"):
        prepare_task("chemistry", {**cfg, "n_test": 31}, tmp_path / "short")


def test_chemistry_options_follow_their_labels(tmp_path):
    raw = _sciknoweval_raw(2)
    raw[1]["choices"] = {"text": ["d", "b", "a", "c"], "label": ["D", "B", "A", "C"]}
    row = get_task("chemistry").from_raw(raw[1], 1)
    assert row["choices"] == ["a", "b", "c", "d"]


def test_boolq_and_gsm8k_real_schemas(tmp_path):
    boolq = [{"question": f"is it {i}", "answer": bool(i % 2), "passage": f"Passage {i}."} for i in range(6)]
    files = {"train": _parquet(tmp_path / "btrain.parquet", boolq), "validation": _parquet(tmp_path / "bval.parquet", boolq)}
    cfg = {"source": "hf", "dataset": "parquet", "data_files": files, "train_split": "train[:2]",
           "test_split": "validation[:4]", "n_train": 2, "n_test": 4, "max_new_tokens": 8}
    prepare_task("boolq", cfg, tmp_path / "b")
    test = read_jsonl(tmp_path / "b/test.jsonl")
    assert [r["answer"] for r in test] == [False, True, False, True]
    assert get_task("boolq").score("\\boxed{yes}", test[1]) == 1.0
    assert "Question: is it 1?" in get_task("boolq").user_prompt(test[1])

    gsm = [{"question": f"Q{i}", "answer": f"Step one.\nStep two.\n#### {1000 + i:,}"} for i in range(5)]
    files = {"train": _parquet(tmp_path / "gtrain.parquet", gsm), "test": _parquet(tmp_path / "gtest.parquet", gsm)}
    cfg = {"source": "hf", "dataset": "parquet", "data_files": files, "train_split": "train", "test_split": "test",
           "n_train": 3, "n_test": 5, "max_new_tokens": 8}
    prepare_task("gsm8k", cfg, tmp_path / "g")
    row = read_jsonl(tmp_path / "g/test.jsonl")[2]
    assert row["answer"] == "1002"
    task = get_task("gsm8k")
    assert task.reward("<think>t</think><answer>1,002</answer>", row) == pytest.approx(1.1)
    assert task.messages(row)[0]["role"] == "system" and "<answer>" in task.messages(row)[0]["content"]


def test_bad_row_names_index_and_field_or_is_skipped_and_counted(tmp_path):
    raw = _countdown_raw(8)
    raw[3]["target"] = None  # a field missing from one row is stored as null
    files = _jsonl(tmp_path / "c.jsonl", raw)
    cfg = {"source": "hf", "dataset": "json", "data_files": {"train": files}, "train_split": "train[:4]",
           "test_split": "train[4:8]", "n_train": 3, "n_test": 4, "max_new_tokens": 8}
    with pytest.raises(RowError, match=r"task countdown: split 'train\[:4\]': row 3: missing field 'target'"):
        prepare_task("countdown", cfg, tmp_path / "out")
    manifest = prepare_task("countdown", {**cfg, "skip_bad_rows": True}, tmp_path / "out")
    assert manifest["skipped_rows"] == 1 and "row 3: missing field 'target'" in manifest["skipped_examples"][0]
    assert manifest["counts"] == {"train": 3, "test": 4}


def test_wrong_type_and_missing_column_are_named(tmp_path):
    raw = [{"target": str(r["target"]), "nums": r["nums"]} for r in _countdown_raw(4)]
    cfg = {"source": "hf", "dataset": "json", "data_files": {"train": _jsonl(tmp_path / "c.jsonl", raw)},
           "train_split": "train[:2]", "test_split": "train[2:]", "n_train": 2, "n_test": 2, "max_new_tokens": 8}
    with pytest.raises(RowError, match="row 0: field 'target' must be int, got str"):
        prepare_task("countdown", cfg, tmp_path / "out")
    gsm = [{"question": "q", "answer": "no final line"}]
    cfg = {"source": "hf", "dataset": "json", "data_files": {"test": _jsonl(tmp_path / "g.jsonl", gsm)},
           "split": "test", "n_train": 1, "n_test": 1, "max_new_tokens": 8}
    with pytest.raises(RowError, match="row 0: field 'answer' must end with '#### <number>'"):
        prepare_task("gsm8k", cfg, tmp_path / "g")
    with pytest.raises(RowError, match="row 0: missing field 'type'"):
        prepare_task("gsm8k", {**cfg, "where": {"type": "x"}}, tmp_path / "g")


def test_load_failures_and_bad_configs_are_one_line_errors(tmp_path):
    cfg = {"source": "hf", "dataset": "json", "data_files": {"train": str(tmp_path / "absent.jsonl")},
           "train_split": "train", "test_split": "train", "n_train": 1, "n_test": 1, "max_new_tokens": 8}
    with pytest.raises(EsftError, match="cannot load 'json' split 'train'") as err:
        prepare_task("boolq", cfg, tmp_path / "out")
    assert "\n" not in str(err.value)
    with pytest.raises(EsftError, match="needs split, or train_split and test_split"):
        prepare_task("boolq", {k: v for k, v in cfg.items() if k != "test_split"}, tmp_path / "out")
    with pytest.raises(EsftError, match="needs a dataset"):
        prepare_task("boolq", {**cfg, "dataset": ""}, tmp_path / "out")
    with pytest.raises(EsftError, match="has no real dataset"):
        prepare_task("conciseness", {**cfg}, tmp_path / "out")
    with pytest.raises(EsftError, match="known tasks: boolq, chemistry"):
        prepare_task("nope", cfg, tmp_path / "out")


def test_stand_ins_keep_their_prompts_and_feed_the_default_config(tmp_path):
    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config/config.yaml").read_text())
    for name, cfg in config["tasks"].items():
        manifest = prepare_task(name, cfg, tmp_path / name)
        rows = read_jsonl(tmp_path / name / "test.jsonl")
        assert manifest["counts"]["test"] == len(rows) > 0 and manifest["source"] in ("synthetic", "embedded")
        task = get_task(name)
        assert all("prompt_style" not in r and task.messages(r)[0]["role"] == "user" for r in rows)
    row = read_jsonl(tmp_path / "countdown/train.jsonl")[0]
    nums = " ".join(map(str, row["numbers"]))
    assert get_task("countdown").user_prompt(row) == \
        f"Make {row['target']} from {nums} with + - * /, each number once. Answer \\boxed{{expr}}."
