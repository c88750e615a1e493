"""Log-likelihood of given token sequences, prefill only, without materialising full logits.

A forward that returns logits holds [rows, length, vocab] in memory at once: 200 rows × 1.5k tokens ×
152k vocabulary is ~180 GB in fp32. Here the decoder runs on `batch_size` rows at a time and the LM
head plus the fp32 log-softmax see `chunk` positions of its hidden states at a time, so the largest
logits tensor is [batch_size, chunk, vocab]. Assumes logits = output_embeddings(decoder hidden states)
(Qwen, Llama, Mistral; not models with logit scaling or soft-capping).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from esft.errors import EsftError
from esft.tokens import pad_batch

LOGITS_BUDGET = 1 << 26
"""Logit entries per LM-head slice when no chunk is given (256 MiB in fp32)."""


def check_plain_head(model) -> None:
    """Chunked scorers apply the output embedding to hidden-state slices: refuse models whose logits are
    scaled or soft-capped after it."""
    for key in ("final_logit_softcapping", "logit_scale"):
        if getattr(model.config, key, None):
            raise EsftError(f"chunked scoring assumes plain LM-head logits; this model sets {key}")


MAX_LENGTH = 512
"""Tokens kept of a corpus text (eos included) by `encode_texts`."""


def encode_texts(texts: Sequence[str], tokenizer, max_length: int = MAX_LENGTH) -> list[list[int]]:
    """Token ids of each text followed by eos, truncated to `max_length` tokens: the rows a corpus
    log-likelihood scores (ES's loglik fitness and the AdamW baseline's loss alike)."""
    rows = []
    for i, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: max_length - 1] + [tokenizer.eos_token_id]
        if len(ids) < 2:
            raise EsftError(f"corpus text {i} has no token to score")
        rows.append(ids)
    return rows


def logprob_sums(model, rows: Sequence[Sequence[int]], starts: Sequence[int], pad_id: int,
                 chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ log p(tⱼ | t₍<ⱼ₎) over positions j ≥ start in float64, number of such tokens) of each row of one
    batch; differentiable when autograd is on (the AdamW baseline's loss), `score_sequences` otherwise.

    starts[i] ≥ 1 masks the prompt of row i (the first token has no prefix to be scored from); padding is
    never scored. chunk: positions per LM-head slice (default: LOGITS_BUDGET entries).
    """
    if len(starts) != len(rows):
        raise EsftError(f"{len(rows)} sequences but {len(starts)} start positions")
    if any(s < 1 for s in starts):
        raise EsftError("start positions must be >= 1: the first token has no prefix to score it from")
    check_plain_head(model)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    device = next(model.parameters()).device
    ids, mask = pad_batch(rows, pad_id, device=device)
    hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state  # no KV
    # the hidden state at position p predicts token p + 1; score targets j in [start, length)
    positions = torch.arange(1, ids.shape[1], device=device)
    lengths = torch.tensor([len(r) for r in rows], device=device)
    begin = torch.tensor(list(starts), device=device)
    scored = (positions >= begin[:, None]) & (positions < lengths[:, None])
    sums = torch.zeros(len(rows), dtype=torch.float64, device=device)
    lo = min(int(begin.min()), ids.shape[1]) - 1  # no row scores a target before its start
    step = chunk or max(1, LOGITS_BUDGET // (len(rows) * head.weight.shape[0]))
    for c in range(lo, ids.shape[1] - 1, step):
        logits = head(hidden[:, c:c + step]).float()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, c + 1:c + 1 + step, None]).squeeze(-1)
        sums = sums + torch.where(scored[:, c:c + step], logp, 0.0).sum(dim=1, dtype=torch.float64)
    return sums, scored.sum(dim=1)


@torch.inference_mode()
def score_sequences(model, sequences: Sequence[Sequence[int]], starts: Sequence[int], pad_id: int,
                    batch_size: int, chunk: int | None = None) -> list[tuple[float, int]]:
    """(Σ log p(tⱼ | t₍<ⱼ₎) over positions j ≥ start, number of such tokens) of each sequence, `batch_size`
    rows per forward (`logprob_sums`)."""
    if len(starts) != len(sequences):
        raise EsftError(f"{len(sequences)} sequences but {len(starts)} start positions")
    results: list[tuple[float, int]] = []
    for first in range(0, len(sequences), batch_size):
        sums, counts = logprob_sums(model, sequences[first:first + batch_size], starts[first:first + batch_size],
                                    pad_id, chunk)
        results.extend(zip(sums.tolist(), counts.tolist()))
    return results
