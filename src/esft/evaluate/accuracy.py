"""Greedy accuracy of one checkpoint on the test split of every task."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from esft.io import read_json, read_jsonl, write_json, write_jsonl
from esft.rollout import encode_prompts, generate
from esft.tasks import get_task

log = logging.getLogger(__name__)


def evaluate_tasks(model, tokenizer, data_dirs: dict[str, Path], task_cfgs: dict[str, dict[str, Any]],
                   batch_size: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """({task: {accuracy, n, tokens}}, completions) for the test split of each task in `data_dirs`."""
    metrics: dict[str, Any] = {}
    completions: list[dict[str, Any]] = []
    for name, data_dir in data_dirs.items():
        task = get_task(name)
        rows = read_jsonl(Path(data_dir) / "test.jsonl")
        start = time.perf_counter()
        prompts = encode_prompts(tokenizer, [task.messages(r) for r in rows])
        gens = generate(model, tokenizer, prompts, task_cfgs[name]["max_new_tokens"], batch_size)
        scores = [task.score(text, row) for text, row in zip(gens.texts, rows)]
        metrics[name] = {"accuracy": sum(scores) / len(scores), "n": len(rows), "tokens": gens.total_tokens}
        completions.extend(
            {"task": name, "index": i, "completion": text, "score": s}
            for i, (text, s) in enumerate(zip(gens.texts, scores))
        )
        log.info("%s: accuracy %.4f on %d rows (%.1fs)", name, metrics[name]["accuracy"], len(rows),
                 time.perf_counter() - start)
    return metrics, completions


def write_evaluation(out: str | Path, metrics: dict[str, Any], completions: list[dict[str, Any]]) -> None:
    out = Path(out)
    write_json(out, metrics)
    write_jsonl(out.with_name("completions.jsonl"), completions)


def collect_accuracy(files: dict[str, str | Path]) -> pd.DataFrame:
    """Long table (checkpoint, method, schedule, stage, trained_task, task, accuracy, n) from metric files.

    Keys of `files` are checkpoint labels: `base` or `method/schedule/k-task`.
    """
    rows = []
    for label, path in files.items():
        if label == "base":
            method, schedule, trained, stage = "base", "-", "-", 0
        else:
            method, schedule, run = label.split("/")
            k, trained = run.split("-", 1)
            stage = int(k)
        for task, m in read_json(path).items():
            rows.append({"checkpoint": label, "method": method, "schedule": schedule, "stage": stage,
                         "trained_task": trained, "task": task, "accuracy": m["accuracy"], "n": m["n"]})
    return pd.DataFrame(rows)
