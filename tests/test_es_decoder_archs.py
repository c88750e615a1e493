"""Population decoding beyond Qwen3: Qwen2 and Llama (biases, no q/k norm, llama3 rope) match HF and `inplace`."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from esft.errors import EsftError
from esft.methods.es import Population
from esft.methods.es.batched import BatchedEvaluator
from esft.methods.es.fitness import TaskFitness
from esft.methods.es.lowrank import LowRankPopulation, LowRankWeights
from esft.methods.es.modes import InplaceEvaluator
from esft.rollout import encode_prompts, stop_ids
from esft.rollout.decoder import PopulationDecoder, SharedWeights
from esft.tasks import get_task
from esft.tokens import pad_batch

MAX_NEW = 12
SHAPE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 128}
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
ARCHS = {
    # q/k/v biases, tied embeddings
    "qwen2": lambda vocab: Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, tie_word_embeddings=True, **SHAPE)),
    # biases on every projection, o_proj and the MLP's included, and a scaled rope
    "llama-bias-llama3": lambda vocab: LlamaForCausalLM(LlamaConfig(vocab_size=vocab, attention_bias=True,
                                                                    mlp_bias=True, rope_parameters=LLAMA3_ROPE,
                                                                    **SHAPE)),
    "llama": lambda vocab: LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **SHAPE)),
}


@pytest.fixture(params=sorted(ARCHS))
def arch_model(request, tokenizer):
    """A tiny random model with large weights and nonzero biases, so greedy outputs differ between prompts."""
    torch.manual_seed(0)
    model = ARCHS[request.param](len(tokenizer)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 or name.endswith(".bias"):
                p.normal_(0, 0.3, generator=gen)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


@pytest.fixture()
def fitness(tokenizer):
    rows = [{"prompt": "2 * 7 =", "target": "14"}, {"prompt": "Is ice cold?", "target": "Yes"},
            {"prompt": "Say hello to everyone.", "target": "hello"}]
    return TaskFitness(get_task("conciseness"), rows, tokenizer, MAX_NEW, generation_batch_size=8)


def test_decoder_matches_hf_generate(arch_model, tokenizer):
    prompts = encode_prompts(tokenizer, [[{"role": "user", "content": c}] for c in ["hi", "What is 12 + 30?", "ok"]])
    ids, mask = pad_batch(prompts, tokenizer.pad_token_id, left=True)
    with torch.inference_mode():
        ref = arch_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16,
                                  do_sample=False)[:, ids.shape[1]:]
    out = PopulationDecoder(arch_model).generate(SharedWeights(arch_model), 2, prompts, 16, tokenizer.pad_token_id,
                                                 stop_ids(arch_model, tokenizer))
    assert torch.equal(out[0, :, :ref.shape[1]], ref) and torch.equal(out[1], out[0])
    assert len(set(map(tuple, ref.tolist()))) == 3


def test_batched_equals_inplace(arch_model, fitness):
    pop = Population(dict(arch_model.named_parameters()), seed=3)
    members, indices = range(6), [0, 1, 2]
    inplace = InplaceEvaluator(arch_model, pop, fitness)(1, members, 0.05, indices)
    assert BatchedEvaluator(arch_model, pop, fitness)(1, members, 0.05, indices) == inplace
    assert len({f for f, _ in inplace}) > 1, "members must differ for the comparison to mean anything"


def test_lowrank_equals_lowrank_inplace(arch_model, fitness):
    pop = LowRankPopulation(dict(arch_model.named_parameters()), seed=3, rank=2)
    members, indices = range(6), [0, 1, 2]
    inplace = InplaceEvaluator(arch_model, pop, fitness)(1, members, 0.3, indices)
    assert BatchedEvaluator(arch_model, pop, fitness, weights=LowRankWeights)(1, members, 0.3, indices) == inplace
    assert len({f for f, _ in inplace}) > 1


@pytest.mark.parametrize("build, message", [
    (lambda: GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=40)),
     "supports qwen3, qwen2, llama models, not 'gpt2'"),
    (lambda: Qwen2ForCausalLM(Qwen2Config(use_sliding_window=True, sliding_window=8, max_window_layers=1, **SHAPE)),
     r"sliding-window attention \(layer 1\)"),
    (lambda: LlamaForCausalLM(LlamaConfig(rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0,
                                                           "factor": 2.0}, **SHAPE)),
     "rope types default, linear, llama3, yarn, not 'dynamic'"),
])
def test_unsupported_models_are_rejected(build, message):
    with pytest.raises(EsftError, match=message):
        PopulationDecoder(build())
