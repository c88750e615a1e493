"""Prompts: system + user turns through the chat template, plain text without one; the CLI's bad-row error."""

from __future__ import annotations

import copy
import json
import logging

import pytest

from esft.rollout import encode_prompts
from esft.tasks import get_task

PAPER_ROWS = {
    "countdown": {"numbers": [3, 5, 7], "target": 22, "prompt_style": "paper"},
    "math": {"problem": "What is $1+1$?", "answer": "2", "prompt_style": "paper"},
    "chemistry": {"question": "Which is a noble gas?", "choices": ["Ne", "Na", "N", "Ni"], "answer": "A",
                  "prompt_style": "paper"},
    "boolq": {"question": "is neon a gas", "passage": "Neon is a gas.", "answer": True, "prompt_style": "paper"},
    "gsm8k": {"question": "Tom has 2 pens and buys 3. How many?", "answer": "5"},
}


@pytest.mark.parametrize("name", sorted(PAPER_ROWS))
def test_paper_prompts_go_through_the_chat_template(name, tokenizer):
    task, row = get_task(name), PAPER_ROWS[name]
    msgs = task.messages(row)
    assert [m["role"] for m in msgs] == ["system", "user"]
    text = tokenizer.decode(encode_prompts(tokenizer, [msgs])[0])
    assert msgs[0]["content"] in text and msgs[1]["content"] in text
    assert text.index(msgs[0]["content"]) < text.index(msgs[1]["content"])
    answer_format = {"countdown": "\\boxed{", "math": "\\boxed{}", "chemistry": '"answer":"X"', "boolq": "\\boxed{yes}",
                     "gsm8k": "<answer></answer>"}[name]
    assert answer_format in " ".join(m["content"] for m in msgs)


def test_base_models_without_a_chat_template_get_plain_text(tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    msgs = get_task("math").messages(PAPER_ROWS["math"])
    text = plain.decode(encode_prompts(plain, [msgs])[0])
    assert text == msgs[0]["content"] + "\n\n" + msgs[1]["content"] + "\n"


def test_stand_in_rows_keep_the_short_prompt_without_system_turn():
    task = get_task("math")
    row = {"problem": "What is 2 + 3?", "answer": "5"}
    assert task.messages(row) == [{"role": "user", "content": "What is 2 + 3? Answer \\boxed{}."}]


def test_cli_reports_a_bad_row_in_one_line(tmp_path, caplog, monkeypatch):
    import datasets

    from esft.cli import main

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    data = tmp_path / "boolq.jsonl"
    data.write_text('{"question": "q", "answer": true, "passage": "p"}\n{"question": "q", "answer": true}\n')
    cfg = {"source": "hf", "dataset": "json", "data_files": {"train": str(data)}, "train_split": "train",
           "test_split": "train", "n_train": 1, "n_test": 1, "max_new_tokens": 8}
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_:
        main(["prepare-task", "--task", "boolq", "--cfg", json.dumps(cfg), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["task boolq: split 'train': row 1: missing field 'passage'"]
