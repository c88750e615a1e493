"""Greedy (or seeded sampled) batched generation with a Hugging Face causal LM."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from esft.errors import EsftError
from esft.tokens import pad_batch


@dataclass
class Generations:
    texts: list[str]
    """Decoded completions, special tokens removed."""
    n_tokens: list[int]
    """Generated tokens per completion, up to and including the stop token."""
    ids: list[list[int]]
    """The generated token ids that `n_tokens` counts: scorers use them, never re-tokenised text."""

    @property
    def total_tokens(self) -> int:
        return sum(self.n_tokens)


def stop_ids(model, tokenizer) -> list[int]:
    """Token ids that end a completion: the model's generation_config eos (an int or a list; Qwen's chat
    models stop on <|im_end|> and on <|endoftext|>), else the tokenizer's eos, as HF generate does."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        raise EsftError("neither the model's generation_config nor the tokenizer names an eos token")
    return [eos] if isinstance(eos, int) else list(eos)


def encode_prompts(tokenizer, messages: Sequence[list[dict[str, str]]]) -> list[list[int]]:
    """Token ids of each conversation with the generation prompt; plain text if there is no chat template."""
    encoded = []
    for msgs in messages:
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        else:
            text = "\n\n".join(m["content"] for m in msgs) + "\n"
        encoded.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return encoded


def _batch_seed(seed: int, start: int) -> int:
    """The 63-bit sampling seed of the generation batch that begins at prompt `start`."""
    digest = hashlib.blake2b(f"{seed}|generation-batch|{start}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@torch.inference_mode()
def generate(model, tokenizer, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int,
             batch_size: int = 64, temperature: float = 0.0, seed: int | None = None,
             top_p: float = 1.0) -> Generations:
    """Completions of pre-tokenised prompts, in batches of `batch_size`: greedy, or sampled at
    `temperature` > 0 from softmax(logits/temperature), no top-k, truncated to its nucleus of mass `top_p`
    (1: the whole distribution).

    Sampling needs `seed`: each batch draws from torch's RNG seeded with `_batch_seed(seed, start)` (the
    caller's RNG state is restored), so a batch's completions depend on its prompts, the model and that
    key alone, not on how many steps earlier batches ran.
    """
    if temperature > 0 and seed is None:
        raise EsftError("sampled generation (temperature > 0) needs a seed")
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=top_p) if temperature > 0 \
        else dict(do_sample=False)
    device = next(model.parameters()).device
    stops = stop_ids(model, tokenizer)
    texts: list[str] = []
    counts: list[int] = []
    ids_out: list[list[int]] = []
    for start in range(0, len(prompt_ids), batch_size):
        chunk = prompt_ids[start:start + batch_size]
        ids, mask = pad_batch(chunk, tokenizer.pad_token_id, left=True, device=device)
        with torch.random.fork_rng() if temperature > 0 else nullcontext():
            if temperature > 0:
                torch.manual_seed(_batch_seed(seed, start))
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, **sampling,
                eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
            )
        done = decode_completions(tokenizer, out[:, ids.shape[1]:].tolist(), stops)
        texts.extend(done.texts)
        counts.extend(done.n_tokens)
        ids_out.extend(done.ids)
    return Generations(texts, counts, ids_out)


def decode_completions(tokenizer, rows: Sequence[Sequence[int]], stops: Collection[int]) -> Generations:
    """Completions from generated token rows, each cut after its first stop id (`stop_ids`), which counts.

    Pads follow a stop only, so a row without one is whole: the pad may itself be a stop id (Qwen pads
    with <|endoftext|>), and a row ending on it must keep it.
    """
    stops = set(stops)
    texts: list[str] = []
    counts: list[int] = []
    kept: list[list[int]] = []
    for row in rows:
        n = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
        counts.append(n)
        kept.append(row[:n])
        texts.append(tokenizer.decode(row[:n], skip_special_tokens=True))
    return Generations(texts, counts, kept)
