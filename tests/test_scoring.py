"""Chunked log-likelihood scoring equals the full-logits computation and never holds more logits than
one chunk."""

from __future__ import annotations

import pytest
import torch

from esft.errors import EsftError
from esft.methods.es.fitness import CorpusFitness
from esft.rollout import score_sequences
from esft.tokens import pad_batch

SEQUENCES = [[5, 9, 12, 7, 30, 31, 2], [40, 41], [8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8], [3, 60, 61, 62]]
STARTS = [3, 1, 10, 2]


def _naive(model, sequences, starts, pad_id):
    """Σ log p over positions ≥ start from one forward over full fp32 logits."""
    ids, mask = pad_batch(sequences, pad_id)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    out = []
    for i, (seq, start) in enumerate(zip(sequences, starts)):
        terms = [float(logp[i, j - 1, seq[j]]) for j in range(start, len(seq))]
        out.append((sum(terms), len(terms)))
    return out


@pytest.mark.parametrize("batch_size, chunk", [(1, 1), (2, 3), (4, 5), (3, None), (8, 100)])
def test_chunked_scores_equal_the_full_logits(tiny_model, tokenizer, batch_size, chunk):
    expected = _naive(tiny_model, SEQUENCES, STARTS, tokenizer.pad_token_id)
    got = score_sequences(tiny_model, SEQUENCES, STARTS, tokenizer.pad_token_id, batch_size, chunk)
    assert [n for _, n in got] == [n for _, n in expected] == [4, 1, 1, 2]
    for (s, _), (e, _) in zip(got, expected):
        assert s == pytest.approx(e, rel=1e-5, abs=1e-5)


def test_the_lm_head_never_sees_more_than_one_chunk(tiny_model, tokenizer):
    head = tiny_model.get_output_embeddings()
    seen = []
    hook = head.register_forward_hook(lambda mod, args, out: seen.append(tuple(out.shape)))
    try:
        score_sequences(tiny_model, SEQUENCES, STARTS, tokenizer.pad_token_id, batch_size=2, chunk=3)
    finally:
        hook.remove()
    assert seen and all(rows <= 2 and positions <= 3 for rows, positions, _ in seen)
    # positions before every row's first scored target are skipped: batch 2 starts scoring at position 9
    assert sum(p for _, p, _ in seen) < sum(len(s) - 1 for s in SEQUENCES)


def test_scoring_is_dtype_agnostic(tiny_model, tokenizer):
    model = tiny_model.to(torch.bfloat16)
    got = score_sequences(model, SEQUENCES, STARTS, tokenizer.pad_token_id, batch_size=4, chunk=2)
    expected = _naive(model, SEQUENCES, STARTS, tokenizer.pad_token_id)
    for (s, n), (e, m) in zip(got, expected):
        assert n == m and s == pytest.approx(e, rel=1e-5, abs=1e-5)


def test_start_positions_are_checked(tiny_model, tokenizer):
    with pytest.raises(EsftError, match=">= 1"):
        score_sequences(tiny_model, SEQUENCES, [0, 1, 1, 1], tokenizer.pad_token_id, 2)
    with pytest.raises(EsftError, match="start positions"):
        score_sequences(tiny_model, SEQUENCES, [1], tokenizer.pad_token_id, 2)


def test_corpus_fitness_keeps_its_values(tiny_model, tokenizer):
    """CorpusFitness (now chunked) with average token gives the mean of the full-logits log-likelihood over all
    tokens."""
    texts = ["the cat sat on the mat", "ab", "hello world, hello again"]
    fit = CorpusFitness(texts, tokenizer, batch_size=2, average="token")
    value, count = fit(tiny_model, [0, 1, 2], member=0)
    expected = _naive(tiny_model, fit.ids, [1, 1, 1], tokenizer.pad_token_id)
    assert count == sum(n for _, n in expected) == sum(len(ids) - 1 for ids in fit.ids)
    assert value == pytest.approx(sum(s for s, _ in expected) / count, rel=1e-5)
