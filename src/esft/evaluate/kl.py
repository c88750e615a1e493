"""KL divergence of a checkpoint from an earlier one along completions of the earlier one (Figure 2).

For a reference model p (π_{k−1} or the base π_0) and a later model q, completions are sampled from p
and both models score the same token ids: at every completion position the exact KL over the whole
vocabulary, Σ_v p(v) log p(v)/q(v), of the two models' next-token distributions (at temperature 1: the
sampling temperature only chooses which states are visited), summed over completion tokens and
divided by their number. Prompt and padding positions are masked. With temperature 1 this is an
unbiased estimate of the sequence-level KL(p ‖ q) per token.

`direction` forward (the default) takes p = the earlier model (π_{k−1} or π_0) and q = the checkpoint;
reverse takes p = the checkpoint, KL(current ‖ reference), the direction the paper's authors log. Their
code scores only the sampled token (`estimator`): k1 = log p(x)/q(x) (their ES trainer) or
k3 = q(x)/p(x) − 1 − log q(x)/p(x) (their GRPO trainer, never negative). Both are unbiased for the
per-position KL at temperature 1 but noisier than `exact`, which sums over the vocabulary at the same
positions.

Sampling is keyed per completion: sample s of prompt i of task t draws all its uniforms from a
generator seeded by (seed, t, i, s) and picks each token by inverse CDF, so completions depend neither
on the batch size nor on which prompts share a batch. (A batched forward may differ from a single-row
one in the last bit; that changes a token only if it moves a CDF boundary across the row's uniform.)

Memory: the decoder runs `batch_size` rows at a time and the LM head plus the fp32 log-softmax see
`chunk_tokens` completion positions at a time, so nothing of shape [batch, length, vocab] is built.
Assumes logits = output_embeddings(decoder hidden states) (Qwen, Llama, Mistral; not soft-capped heads).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from esft.errors import EsftError
from esft.io import read_json
from esft.labels import checkpoint_fields
from esft.rollout import encode_prompts, stop_ids
from esft.rollout.scoring import check_plain_head
from esft.tasks import get_task, read_rows
from esft.tokens import pad_batch

log = logging.getLogger(__name__)


def sample_key(seed: int, task: str, prompt: int, sample: int) -> int:
    """The 63-bit generator seed of one sampled completion."""
    digest = hashlib.blake2b(f"{seed}|kl|{task}|{prompt}|{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _cache_argument(model) -> str:
    """The forward's KV-cache keyword: `cache` in transformers 5.2x, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def head_log_probs(head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """fp32 log-softmax of the LM head applied to hidden states [..., H] (one slice of positions)."""
    return torch.log_softmax(head(hidden).float(), dim=-1)


@torch.inference_mode()
def sample_completions(model, prompts: Sequence[Sequence[int]], keys: Sequence[int], max_new_tokens: int,
                       temperature: float, stops: Sequence[int], pad_id: int, batch_size: int,
                       desc: str = "sample") -> list[list[int]]:
    """Token ids of one completion per prompt row (the stop token included, nothing after it).

    Row r draws `max_new_tokens` uniforms from a generator seeded with keys[r] and takes token t as
    the inverse CDF of softmax(logits/temperature) at uniform t (argmax when temperature is 0). Rows
    are batched by prompt length (less padding) and returned in the given order.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    exact = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    stop = torch.tensor(list(stops), device=device)
    order = sorted(range(len(prompts)), key=lambda r: len(prompts[r]))
    out: list[list[int]] = [[] for _ in prompts]
    for first in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
        rows = order[first:first + batch_size]
        uniforms = torch.stack([torch.rand(max_new_tokens, generator=torch.Generator().manual_seed(keys[r]),
                                           dtype=torch.float64) for r in rows]).to(device, exact)
        ids, mask = pad_batch([prompts[r] for r in rows], pad_id, left=True, device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = {_cache_argument(model): DynamicCache()}  # filled in place by every forward
        step = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                     **cache)
        alive = torch.ones(len(rows), dtype=torch.bool, device=device)
        tokens = []
        for t in range(max_new_tokens):
            logits = step.logits[:, -1].to(exact)
            if temperature > 0:
                cdf = torch.softmax(logits / temperature, dim=-1).cumsum(-1)
                pick = torch.searchsorted(cdf, uniforms[:, t:t + 1] * cdf[:, -1:], right=True).squeeze(-1)
                token = pick.clamp(max=logits.shape[-1] - 1)
            else:
                token = logits.argmax(-1)
            token = torch.where(alive, token, pad_id)
            tokens.append(token)
            alive &= ~torch.isin(token, stop)
            if t + 1 == max_new_tokens or not bool(alive.any()):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            step = model(input_ids=token[:, None], attention_mask=mask, position_ids=positions, use_cache=True,
                         **cache)
        generated = torch.stack(tokens, dim=1).tolist()
        for r, row in zip(rows, generated):
            n = next((i + 1 for i, tok in enumerate(row) if tok in stops), len(row))
            out[r] = row[:n]
    return out


@torch.inference_mode()
def kl_along(p_model, q_model, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
             pad_id: int, batch_size: int, chunk_tokens: int, estimator: str = "exact") -> list[tuple[float, int]]:
    """(Σ over completion tokens of KL(p ‖ q) at that position, number of completion tokens) per row: the
    exact KL of the two next-token distributions, or its k1 / k3 estimate from the completion's own token.

    Both models see the same ids, prompt + completion; the hidden state at position j gives the
    distribution of token j + 1, so completion token c of a prompt of length P is scored at P − 1 + c.
    """
    for model in (p_model, q_model):
        check_plain_head(model)
    device = next(p_model.parameters()).device
    heads = p_model.get_output_embeddings(), q_model.get_output_embeddings()
    results: list[tuple[float, int]] = []
    for first in range(0, len(prompts), batch_size):
        rows = range(first, min(first + batch_size, len(prompts)))
        ids, mask = pad_batch([list(prompts[r]) + list(completions[r]) for r in rows], pad_id, device=device)
        start = torch.tensor([len(prompts[r]) - 1 for r in rows], device=device)
        end = start + torch.tensor([len(completions[r]) for r in rows], device=device)
        position = torch.arange(ids.shape[1], device=device)
        scored = (position >= start[:, None]) & (position < end[:, None])
        row_of = scored.nonzero()[:, 0]
        hp, hq = (m.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state[scored]
                  for m in (p_model, q_model))
        following = ids.roll(-1, dims=1)[scored]  # the token each scored position predicts
        sums = torch.zeros(len(rows), dtype=torch.float64, device=device)
        for c in range(0, hp.shape[0], chunk_tokens):
            logp = head_log_probs(heads[0], hp[c:c + chunk_tokens])
            logq = head_log_probs(heads[1], hq[c:c + chunk_tokens])
            kl = position_kl(logp, logq, following[c:c + chunk_tokens], estimator)
            sums.index_add_(0, row_of[c:c + chunk_tokens], kl.double())
        results.extend(zip(sums.tolist(), scored.sum(dim=1).tolist()))
    return results


def position_kl(logp: torch.Tensor, logq: torch.Tensor, token: torch.Tensor, estimator: str) -> torch.Tensor:
    """KL(p ‖ q) at each position from log-probabilities [positions, vocab]: exact, or k1 / k3 of `token`."""
    if estimator == "exact":
        return (logp.exp() * (logp - logq)).sum(-1)
    log_ratio = (logq - logp).gather(-1, token[:, None]).squeeze(-1)  # log q(x)/p(x)
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return log_ratio.exp() - 1 - log_ratio
    raise EsftError(f"unknown KL estimator {estimator!r}; allowed: exact, k1, k3")


def kl_prompt_indices(n_rows: int, count: int | None, seed: int, task: str) -> list[int]:
    """A seeded subset of `count` test rows (all when None), in file order."""
    if count is None or count >= n_rows:
        return list(range(n_rows))
    return sorted(random.Random(f"{seed}|kl-prompts|{task}").sample(range(n_rows), count))


def kl_on_tasks(reference, model, tokenizer, data_dirs: dict[str, Path], task_cfgs: dict[str, dict[str, Any]],
                cfg: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """({task: {kl, n_prompts, n_tokens, direction, estimator}}, one record per completion with its token
    ids) of KL(reference ‖ model) on each task's test prompts, completions sampled from `reference`, or
    with `direction: reverse` KL(model ‖ reference) sampled from `model`."""
    direction, estimator = cfg.get("direction", "forward"), cfg.get("estimator", "exact")
    if direction not in ("forward", "reverse"):
        raise EsftError(f"evaluate.kl.direction must be forward or reverse, got {direction!r}")
    p_model, q_model = (reference, model) if direction == "forward" else (model, reference)
    stops = stop_ids(p_model, tokenizer)
    metrics: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    for name, data_dir in data_dirs.items():
        start = time.perf_counter()
        task = get_task(name)
        rows = read_rows(task, Path(data_dir) / "test.jsonl")
        chosen = kl_prompt_indices(len(rows), cfg["prompts_per_task"], cfg["seed"], name)
        encoded = encode_prompts(tokenizer, [task.messages(rows[i]) for i in chosen])
        pairs = [(i, p, s) for i, p in zip(chosen, encoded) for s in range(cfg["samples_per_prompt"])]
        prompts = [p for _, p, _ in pairs]
        keys = [sample_key(cfg["seed"], name, i, s) for i, _, s in pairs]
        max_new = cfg.get("max_new_tokens") or task_cfgs[name]["max_new_tokens"]
        completions = sample_completions(p_model, prompts, keys, max_new, cfg["temperature"], stops,
                                         tokenizer.pad_token_id, cfg["batch_size"], desc=f"{name}: sample")
        scores = kl_along(p_model, q_model, prompts, completions, tokenizer.pad_token_id, cfg["batch_size"],
                          cfg["chunk_tokens"], estimator)
        total, n_tokens = sum(s for s, _ in scores), sum(n for _, n in scores)
        metrics[name] = {"kl": total / n_tokens, "n_prompts": len(chosen), "n_tokens": n_tokens,
                         "direction": direction, "estimator": estimator}
        records.extend({"task": name, "index": i, "sample": s, "prompt_ids": p, "completion_ids": c,
                        "kl_sum": k, "n_tokens": n}
                       for (i, p, s), c, (k, n) in zip(pairs, completions, scores))
        log.info("%s: KL %.5g nats/token over %d tokens of %d completions (%.1fs)", name, metrics[name]["kl"],
                 n_tokens, len(pairs), time.perf_counter() - start)
    return metrics, records


def collect_kl(files: dict[tuple[str, str], str | Path]) -> pd.DataFrame:
    """Long table (method, schedule, stage, trained_task, eval_task, reference, kl, n_prompts, n_tokens,
    direction, estimator).

    Keys of `files` are (checkpoint label `method/schedule/k-task`, reference `previous` or `base`); the
    same file may serve both references of a stage whose previous model is the base.
    """
    rows = []
    for (label, reference), path in files.items():
        for task, m in read_json(path).items():
            rows.append({**checkpoint_fields(label), "eval_task": task, "reference": reference, "kl": m["kl"],
                         "n_prompts": m["n_prompts"], "n_tokens": m["n_tokens"],
                         "direction": m.get("direction", "forward"), "estimator": m.get("estimator", "exact")})
    return pd.DataFrame(rows)
