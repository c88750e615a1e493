"""Accuracy evaluation: length-sorted batches return results in file order, with the completions' token ids."""

from __future__ import annotations

import pytest
import torch

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


def test_gpu_batches_hold_the_rows_whose_kv_cache_fits(tiny_model, tokenizer, tmp_path, monkeypatch):
    """A fixed generation_batch_size that fits short prompts overflows on BoolQ's long ones: on a device with
    a capacity each batch holds at most the rows `generation_rows` allows for its longest prompt, and the
    results are those of any other batching."""
    import esft.evaluate.accuracy as accuracy
    from esft.memory import generation_rows
    from esft.methods.es.memory import plan_memory

    cfgs = {"boolq": {"source": "synthetic", "seed": 4, "n_train": 2, "n_test": 9, "max_new_tokens": 5}}
    dirs = {"boolq": tmp_path / "boolq"}
    prepare_task("boolq", cfgs["boolq"], dirs["boolq"])
    expected = evaluate_tasks(tiny_model, tokenizer, dirs, cfgs, batch_size=9)
    longest = max(len(c["prompt_ids"]) for c in expected[1])
    # a capacity whose usable part holds the weights and exactly 2 rows of the longest prompt
    two = plan_memory(tiny_model, {}, rows=2, prompt_tokens=longest, new_tokens=5).device_bytes
    capacity = int((two + (1 << 30)) / 0.95) + 1
    assert generation_rows(tiny_model, longest, 5, 9, capacity) == 2
    assert generation_rows(tiny_model, longest, 5, 9, None) == 9  # CPU: nothing is checked
    sizes = []
    real_generate = accuracy.generate
    monkeypatch.setattr(accuracy, "device_capacity", lambda device: capacity)
    monkeypatch.setattr(accuracy, "generate", lambda m, t, p, n, b: sizes.append(len(p)) or real_generate(m, t, p, n, b))
    assert evaluate_tasks(tiny_model, tokenizer, dirs, cfgs, batch_size=9) == expected
    assert sum(sizes) == 9 and max(sizes) <= 2 < 9 and sizes[0] >= 2  # short prompts: 2 still fit


def test_4b_evaluation_batch_is_sized_from_memory():
    """Qwen3-4B in bf16 on an 80 GB GPU: 256 rows of BoolQ-long prompts (1500 tokens) + 1024 new tokens need
    about 90 GiB of KV; the evaluation takes the rows that fit, and a row that cannot fit is one line."""
    from test_memory import H100, _qwen3_4b

    from esft.errors import EsftError
    from esft.memory import generation_rows
    from esft.methods.es.memory import plan_memory

    model = _qwen3_4b(torch.bfloat16)
    rows = generation_rows(model, 1500, 1024, 256, H100)
    kv_row = 2524 * 2 * 36 * 8 * 128 * 2
    assert 256 * kv_row > 80 * (1 << 30) and 100 < rows < 256
    fits = plan_memory(model, {}, rows=rows, prompt_tokens=1500, new_tokens=1024, capacity=H100)
    over = plan_memory(model, {}, rows=rows + 1, prompt_tokens=1500, new_tokens=1024, capacity=H100)
    assert fits.device_bytes <= fits.usable < over.device_bytes
    assert generation_rows(model, 300, 1024, 256, H100) == 256  # short prompts: the configured batch
    with pytest.raises(EsftError, match=r"^memory plan: one row of 500000 prompt \+ 1024 new tokens"):
        generation_rows(model, 500_000, 1024, 256, H100)
