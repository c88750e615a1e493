"""Accuracy of many weight variants θ₀ + Σ cᵢ·dᵢ (interpolation points, direction probes).

Small models evaluate variants as a population: their weights are stacked and decoded in one greedy
loop (`esft.rollout.decoder.PopulationDecoder` through a `MemberStack`), `variants_per_pass` at a time.
Architectures the decoder does not run, or `variants_per_pass: 1`, load each variant into the model
and call the project's `evaluate_tasks`; both paths give the same greedy completions. `map_variants`
loads each variant in turn for any other evaluation of the model in memory (lm-eval holdouts).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from esft.errors import EsftError
from esft.evaluate.accuracy import evaluate_tasks
from esft.io import open_weights
from esft.rollout import decode_completions, encode_prompts, stop_ids
from esft.tasks import get_task, read_rows

log = logging.getLogger(__name__)

Weights = dict[str, torch.Tensor]
T = TypeVar("T")


@dataclass(frozen=True)
class Variant:
    """θ₀ + Σ coefs[d]·directions[d]; `key` labels it in the results (e.g. {"lambda": 0.5})."""

    key: Mapping[str, Any]
    coefs: Mapping[str, float] = field(default_factory=dict)


@dataclass
class TaskScore:
    accuracy: float
    texts: list[str]


def base_weights(model: torch.nn.Module) -> Weights:
    """θ₀ in fp32 under the model's parameter names (tied weights once)."""
    return {n: p.detach().float().clone() for n, p in model.named_parameters()}


def load_delta(theta0: Mapping[str, torch.Tensor], path: str | Path) -> Weights:
    """θ − θ₀ of a checkpoint (fp32, every parameter of θ₀)."""
    with open_weights(path) as fh:
        names = set(fh.keys())
        missing = sorted(set(theta0) - names)
        if missing:
            raise EsftError(f"{path}: lacks base-model parameters {missing[:5]}")
        return {n: fh.get_tensor(n).float() - t for n, t in theta0.items()}


def norm(weights: Mapping[str, torch.Tensor]) -> float:
    return float(sum(t.double().pow(2).sum() for t in weights.values())) ** 0.5


def variant_weights(theta0: Mapping[str, torch.Tensor], directions: Mapping[str, Weights], variant: Variant,
                    name: str) -> torch.Tensor:
    """One parameter of a variant, in fp32."""
    out = theta0[name].clone()
    for d, c in variant.coefs.items():
        if c:
            out.add_(directions[d][name], alpha=c)
    return out


def _population_decoder(model: torch.nn.Module):
    """The population decoder for `model`, or None where its architecture needs the one-at-a-time path."""
    from esft.rollout.decoder import PopulationDecoder

    try:
        return PopulationDecoder(model)
    except EsftError as err:
        log.info("evaluating variants one at a time: %s", err)
        return None


def evaluate_variants(model: torch.nn.Module, tokenizer, theta0: Mapping[str, torch.Tensor],
                      directions: Mapping[str, Weights], variants: Sequence[Variant],
                      data_dirs: Mapping[str, Path], task_cfgs: Mapping[str, dict[str, Any]], batch_size: int,
                      variants_per_pass: int = 8) -> list[dict[str, TaskScore]]:
    """Greedy test accuracy of every variant on every task of `data_dirs`, in the order of `variants`.

    `batch_size`: prompts per forward pass and variant. The model's weights are left at θ₀.
    """
    decoder = _population_decoder(model) if variants_per_pass > 1 else None
    if decoder is None:
        def score(_: Variant) -> dict[str, TaskScore]:
            metrics, completions = evaluate_tasks(model, tokenizer, dict(data_dirs), dict(task_cfgs), batch_size)
            return {task: TaskScore(m["accuracy"], [c["completion"] for c in completions if c["task"] == task])
                    for task, m in metrics.items()}

        return map_variants(model, theta0, directions, variants, score)
    unique, index = _unique(variants)
    results = _population(decoder, model, tokenizer, theta0, directions, unique, data_dirs, task_cfgs, batch_size,
                          variants_per_pass)
    return [results[i] for i in index]


def map_variants(model: torch.nn.Module, theta0: Mapping[str, torch.Tensor], directions: Mapping[str, Weights],
                 variants: Sequence[Variant], evaluate: Callable[[Variant], T]) -> list[T]:
    """`evaluate(v)` with the model's weights set to each variant v in turn, in the order of `variants`: any
    evaluation that reads the model in memory (accuracy, lm-eval holdouts). Variants with the same weights
    (every direction at scale 0 is θ₀) are evaluated once; the model is left at θ₀."""
    unique, index = _unique(variants)
    results = []
    try:
        for v in unique:
            _load(model, {n: variant_weights(theta0, directions, v, n) for n in theta0})
            results.append(evaluate(v))
    finally:
        _load(model, theta0)
    return [results[i] for i in index]


def _unique(variants: Sequence[Variant]) -> tuple[list[Variant], list[int]]:
    """The first variant of each distinct weights, and for every variant the index of its representative."""
    first: dict[tuple[tuple[str, float], ...], int] = {}
    unique = []
    for v in variants:
        key = _weights_key(v)
        if key not in first:
            first[key] = len(unique)
            unique.append(v)
    return unique, [first[_weights_key(v)] for v in variants]


def _weights_key(variant: Variant) -> tuple[tuple[str, float], ...]:
    return tuple(sorted((d, c) for d, c in variant.coefs.items() if c))


def _load(model: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(weights[name].to(param.dtype))


def _population(decoder, model, tokenizer, theta0, directions, variants, data_dirs, task_cfgs, batch_size,
                per_pass) -> list[dict[str, TaskScore]]:
    from esft.rollout.decoder import MemberStack

    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    tasks = {}
    for name, data_dir in data_dirs.items():
        task = get_task(name)
        tasks[name] = (task, read_rows(task, Path(data_dir) / "test.jsonl"))
    prompts = {name: encode_prompts(tokenizer, [task.messages(r) for r in rows]) for name, (task, rows) in tasks.items()}
    stops = stop_ids(model, tokenizer)
    results: list[dict[str, TaskScore]] = []
    for start in range(0, len(variants), per_pass):
        chunk = variants[start:start + per_pass]
        stacked = {n: torch.stack([variant_weights(theta0, directions, v, n) for v in chunk]).to(dtypes[n])
                   for n in theta0}
        weights = MemberStack(model, stacked)
        texts: list[dict[str, list[str]]] = [{name: [] for name in tasks} for _ in chunk]
        for name in tasks:
            rows = prompts[name]
            for lo in range(0, len(rows), batch_size):
                tokens = decoder.generate(weights, len(chunk), rows[lo:lo + batch_size],
                                          task_cfgs[name]["max_new_tokens"], tokenizer.pad_token_id, stops)
                for member, member_rows in enumerate(tokens.tolist()):
                    texts[member][name].extend(decode_completions(tokenizer, member_rows, stops).texts)
        for member_texts in texts:
            scores = {}
            for name, (task, rows) in tasks.items():
                got = [task.score(t, r) for t, r in zip(member_texts[name], rows)]
                scores[name] = TaskScore(sum(got) / len(got), member_texts[name])
            results.append(scores)
        log.info("evaluated variants %d-%d of %d", start + 1, start + len(chunk), len(variants))
    return results
