"""Accuracy evaluation: length-sorted batches return results in file order, with the completions' token ids."""

from __future__ import annotations

from esft.evaluate.accuracy import evaluate_tasks
from esft.io import read_jsonl
from esft.tasks.prepare import prepare_task


def test_sorted_batches_keep_file_order_and_token_ids(tiny_model, tokenizer, tmp_path):
    cfgs = {"boolq": {"source": "synthetic", "seed": 4, "n_train": 2, "n_test": 7, "max_new_tokens": 5},
            "math": {"source": "synthetic", "seed": 5, "n_train": 2, "n_test": 5, "max_new_tokens": 4}}
    dirs = {name: tmp_path / name for name in cfgs}
    for name, cfg in cfgs.items():
        prepare_task(name, cfg, dirs[name])
    metrics, completions = evaluate_tasks(tiny_model, tokenizer, dirs, cfgs, batch_size=3)
    one_by_one = evaluate_tasks(tiny_model, tokenizer, dirs, cfgs, batch_size=1)
    assert (metrics, completions) == one_by_one
    assert [(c["task"], c["index"]) for c in completions] == [("boolq", i) for i in range(7)] + [("math", i) for i in range(5)]
    for name in cfgs:
        rows = [c for c in completions if c["task"] == name]
        assert metrics[name]["tokens"] == sum(len(c["completion_ids"]) for c in rows)
        assert metrics[name]["n"] == len(read_jsonl(dirs[name] / "test.jsonl"))
    for c in completions:
        assert tokenizer.decode(c["completion_ids"], skip_special_tokens=True) == c["completion"]
        assert c["prompt_ids"] and 1 <= len(c["completion_ids"]) <= cfgs[c["task"]]["max_new_tokens"]
