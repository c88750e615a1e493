"""Population modes: `batched` and `lowrank` return what `inplace` returns on the same seeds."""

from __future__ import annotations

import pytest
import torch

from esft.es import Population
from esft.es.batched import BatchedEvaluator
from esft.es.decoder import Qwen3Decoder, SharedWeights
from esft.es.fitness import TaskFitness
from esft.es.modes import InplaceEvaluator
from esft.rollout import encode_prompts
from esft.tasks import get_task

MAX_NEW = 12


@pytest.fixture()
def lively_model(tiny_model):
    """The micro model with larger weights, so greedy outputs differ between prompts and members."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tiny_model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3, generator=gen)
    return tiny_model


@pytest.fixture()
def fitness(tokenizer):
    task = get_task("conciseness")
    rows = [{"prompt": "Solve: 3 + 5 =", "target": "8"}, {"prompt": "Can penguins fly?", "target": "No"},
            {"prompt": "Name a colour.", "target": "red"}]
    return TaskFitness(task, rows, tokenizer, MAX_NEW, generation_batch_size=8)


def _params(model):
    return {n: p for n, p in model.named_parameters()}


def test_decoder_matches_hf_generate(lively_model, tokenizer):
    prompts = encode_prompts(tokenizer, [[{"role": "user", "content": c}] for c in ["hi", "Solve: 3 + 5 =", "ok?"]])
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    with torch.inference_mode():
        ref = lively_model.generate(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long(),
                                    max_new_tokens=20, do_sample=False)[:, width:]
    out = Qwen3Decoder(lively_model).generate(SharedWeights(lively_model), 2, prompts, 20,
                                               tokenizer.pad_token_id, tokenizer.eos_token_id)
    assert torch.equal(out[0, :, :ref.shape[1]], ref) and torch.equal(out[1], out[0])
    assert len(set(map(tuple, ref.tolist()))) == 3


def test_batched_equals_inplace(lively_model, fitness):
    pop = Population(_params(lively_model), seed=5)
    before = {n: p.detach().clone() for n, p in lively_model.named_parameters()}
    members, indices = range(6), [0, 1, 2]
    inplace = InplaceEvaluator(lively_model, pop, fitness)(3, members, 0.05, indices)
    batched = BatchedEvaluator(lively_model, pop, fitness)(3, members, 0.05, indices)
    chunked = BatchedEvaluator(lively_model, pop, fitness, members_per_pass=4)(3, members, 0.05, indices)
    assert batched == inplace and chunked == inplace
    assert len({f for f, _ in inplace}) > 1, "members must differ for the comparison to mean anything"
    for n, p in lively_model.named_parameters():
        assert torch.equal(p, before[n]), n
