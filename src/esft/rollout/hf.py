"""Greedy (or seeded sampled) batched generation with a Hugging Face causal LM."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Generations:
    texts: list[str]
    """Decoded completions, special tokens removed."""
    n_tokens: list[int]
    """Generated tokens per completion, up to and including the end-of-turn token."""
    ids: list[list[int]]
    """The generated token ids that `n_tokens` counts: scorers use them, never re-tokenised text."""

    @property
    def total_tokens(self) -> int:
        return sum(self.n_tokens)


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


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, left: bool = False,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of token rows padded to one width: left for generation, right for scoring."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def generate(model, tokenizer, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int,
             batch_size: int = 64, temperature: float = 0.0) -> Generations:
    """Completions of pre-tokenised prompts, in batches of `batch_size`: greedy, or sampled at
    `temperature` > 0 (pure softmax sampling, no top-k/top-p) from torch's global RNG, which the
    caller seeds (see `esft.es.noise.sampling_rng`)."""
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 \
        else dict(do_sample=False)
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    texts: list[str] = []
    counts: list[int] = []
    ids_out: list[list[int]] = []
    for start in range(0, len(prompt_ids), batch_size):
        chunk = prompt_ids[start:start + batch_size]
        ids, mask = pad_batch(chunk, tokenizer.pad_token_id, left=True, device=device)
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, **sampling,
            eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
        )
        done = decode_completions(tokenizer, out[:, ids.shape[1]:].tolist())
        texts.extend(done.texts)
        counts.extend(done.n_tokens)
        ids_out.extend(done.ids)
    return Generations(texts, counts, ids_out)


def decode_completions(tokenizer, rows: Sequence[Sequence[int]]) -> Generations:
    """Completions from generated token rows: cut after the first end-of-turn, trailing pads dropped."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    texts: list[str] = []
    counts: list[int] = []
    kept: list[list[int]] = []
    for row in rows:
        row = list(row)
        n = row.index(eos) + 1 if eos in row else len(row)
        while n > 0 and row[n - 1] == pad:
            n -= 1
        counts.append(n)
        kept.append(row[:n])
        texts.append(tokenizer.decode(row[:n], skip_special_tokens=True))
    return Generations(texts, counts, kept)
