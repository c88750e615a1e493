"""Greedy accuracy of one checkpoint on the test split of every task, with the completions' token ids."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from esft.io import read_json, write_json, write_jsonl
from esft.labels import checkpoint_fields
from esft.memory import device_capacity, generation_rows
from esft.rollout import encode_prompts, generate
from esft.rollout.vllm_backend import VllmEngine, VllmOptions, open_engine
from esft.tasks import get_task, read_rows

log = logging.getLogger(__name__)


def task_requests(data_dirs: dict[str, Path], task_cfgs: dict[str, dict[str, Any]]) -> list[tuple[list, int]]:
    """(conversations of the test split, max_new_tokens) of each task: what an evaluation engine serves."""
    requests = []
    for name, d in data_dirs.items():
        task = get_task(name)
        requests.append(([task.messages(r) for r in read_rows(task, Path(d) / "test.jsonl")],
                         task_cfgs[name]["max_new_tokens"]))
    return requests


def load_evaluated(base: str | Path, weights: str | Path | None, dtype: str, device: str, cfg: dict[str, Any],
                   requests: list[tuple[list, int]]):
    """(model, tokenizer) of a checkpoint for `evaluate.backend`: an HF model, or a `VllmEngine` holding it
    and sized for `requests` (`task_requests`)."""
    if cfg.get("backend", "hf") == "hf":
        from esft.models import load_model

        return load_model(base, weights, dtype=dtype, device=device)
    engine = open_engine(base, dtype, VllmOptions.from_dict(cfg.get("vllm", {})), requests)
    if weights is not None:
        engine.load_weights(weights)
    return engine, engine.tokenizer


def reload_weights(model, weights: str | Path) -> None:
    """Put a checkpoint's weights into a model that `load_evaluated` returned (HF model or vLLM engine)."""
    if isinstance(model, VllmEngine):
        model.load_weights(weights)
    else:
        from esft.models import load_weights

        load_weights(model, weights)


def evaluate_tasks(model, tokenizer, data_dirs: dict[str, Path], task_cfgs: dict[str, dict[str, Any]],
                   batch_size: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """({task: {accuracy, n, tokens}}, completions with their token ids) for the test split of each task.

    model: an HF causal LM or a `VllmEngine` (greedy either way). Prompts are batched in order of length,
    so long prompts (BoolQ passages) share batches instead of padding short ones; results come back in
    file order. On a GPU an HF batch holds at most the rows whose KV cache fits (`generation_rows`, for
    the batch's longest prompt); vLLM schedules its own batches.
    """
    engine = isinstance(model, VllmEngine)
    capacity = None if engine else device_capacity(next(model.parameters()).device)
    metrics: dict[str, Any] = {}
    completions: list[dict[str, Any]] = []
    for name, data_dir in data_dirs.items():
        task = get_task(name)
        rows = read_rows(task, Path(data_dir) / "test.jsonl")
        start = time.perf_counter()
        prompts = encode_prompts(tokenizer, [task.messages(r) for r in rows])
        order = sorted(range(len(rows)), key=lambda i: len(prompts[i]))
        ids: list[list[int]] = [[] for _ in rows]
        texts: list[str] = [""] * len(rows)
        max_new, first = task_cfgs[name]["max_new_tokens"], 0
        with tqdm(total=len(order), desc=name, unit="row") as bar:
            while first < len(order):
                longest = len(prompts[order[min(first + batch_size, len(order)) - 1]])
                batch = order[first:first + (batch_size if engine else
                                             generation_rows(model, longest, max_new, batch_size, capacity))]
                first += len(batch)
                batch_prompts = [prompts[i] for i in batch]
                gens = model.generate(batch_prompts, max_new) if engine \
                    else generate(model, tokenizer, batch_prompts, max_new, len(batch))
                for i, text, row_ids in zip(batch, gens.texts, gens.ids):
                    texts[i], ids[i] = text, row_ids
                bar.update(len(batch))
        scores = [task.score(text, row) for text, row in zip(texts, rows)]
        metrics[name] = {"accuracy": sum(scores) / len(scores), "n": len(rows), "tokens": sum(map(len, ids))}
        completions.extend(
            {"task": name, "index": i, "completion": text, "score": s, "prompt_ids": p, "completion_ids": c}
            for i, (text, s, p, c) in enumerate(zip(texts, scores, prompts, ids))
        )
        log.info("%s: accuracy %.4f on %d rows (%.1fs)", name, metrics[name]["accuracy"], len(rows),
                 time.perf_counter() - start)
    return metrics, completions


def write_evaluation(out: str | Path, metrics: dict[str, Any], completions: list[dict[str, Any]]) -> None:
    out = Path(out)
    write_json(out, metrics)
    write_jsonl(out.with_name("completions.jsonl"), completions)


def collect_accuracy(files: dict[str, str | Path]) -> pd.DataFrame:
    """Long table (checkpoint, method, schedule, stage, trained_task, eval_task, accuracy, n, n_tokens)
    from metric files; n_tokens counts the generated tokens. Keys of `files` are checkpoint labels."""
    rows = []
    for label, path in files.items():
        for task, m in read_json(path).items():
            rows.append({"checkpoint": label, **checkpoint_fields(label), "eval_task": task,
                         "accuracy": m["accuracy"], "n": m["n"], "n_tokens": m["tokens"]})
    return pd.DataFrame(rows).astype({"seed": "Int64"})
