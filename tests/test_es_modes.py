"""Population modes: `batched` and `lowrank` return what `inplace` returns on the same seeds."""

from __future__ import annotations

import copy

import pytest
import torch

from esft.methods.es import Population
from esft.methods.es.batched import BatchedEvaluator, StackedWeights
from esft.methods.es.fitness import TaskFitness
from esft.methods.es.lowrank import LowRankPopulation, LowRankWeights
from esft.methods.es.modes import InplaceEvaluator
from esft.rollout import decode_completions, encode_prompts, generate, stop_ids
from esft.rollout.decoder import PopulationDecoder, SharedWeights
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
def two_eos_model(lively_model, tokenizer):
    """lively_model stopping, like Qwen's chat models (<|im_end|>, <|endoftext|>), on either of two eos ids.
    The second, ',', is what greedy decoding emits 2nd on the first fitness prompt and 7th on the third."""
    lively_model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(",")]
    return lively_model


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
    out = PopulationDecoder(lively_model).generate(SharedWeights(lively_model), 2, prompts, 20,
                                                    tokenizer.pad_token_id, stop_ids(lively_model, tokenizer))
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


def test_stop_ids_follow_the_generation_config_else_the_tokenizer(two_eos_model, tokenizer):
    assert stop_ids(two_eos_model, tokenizer) == [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(",")]
    two_eos_model.generation_config.eos_token_id = 7
    assert stop_ids(two_eos_model, tokenizer) == [7]
    two_eos_model.generation_config.eos_token_id = None
    assert stop_ids(two_eos_model, tokenizer) == [tokenizer.eos_token_id]


def test_decode_cuts_after_the_first_stop_id_and_counts_it(tokenizer):
    """Qwen pads with <|endoftext|>, itself a stop id: a row ending on it still counts it."""
    pad, eos, a = tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("a")
    gens = decode_completions(tokenizer, [[a, pad, pad, pad], [a, a, eos, pad], [a, a, a, a]], [eos, pad])
    assert gens.n_tokens == [2, 3, 4] and gens.texts == ["a", "aa", "aaaa"]


def test_generation_stops_on_every_eos_id_of_the_model(two_eos_model, tokenizer, fitness):
    """HF generate and the population decoder both stop on the second eos id and count it."""
    gens = generate(two_eos_model, tokenizer, fitness.prompt_ids, MAX_NEW)
    assert gens.n_tokens == [2, MAX_NEW, 7] and gens.texts[0] == "t,"
    stops = stop_ids(two_eos_model, tokenizer)
    out = PopulationDecoder(two_eos_model).generate(SharedWeights(two_eos_model), 2, fitness.prompt_ids, MAX_NEW,
                                                    tokenizer.pad_token_id, stops)
    for member in out.tolist():
        assert decode_completions(tokenizer, member, stops) == gens
        assert set(member[0][2:]) == {tokenizer.pad_token_id}


def test_inplace_and_batched_fitness_stop_on_every_eos_id(two_eos_model, fitness):
    pop = Population(_params(two_eos_model), seed=5)
    members, indices = range(6), [0, 1, 2]
    unperturbed = InplaceEvaluator(two_eos_model, pop, fitness)(3, members, 0.0, indices)
    assert [tokens for _, tokens in unperturbed] == [2 + MAX_NEW + 7] * 6
    inplace = InplaceEvaluator(two_eos_model, pop, fitness)(3, members, 0.05, indices)
    batched = BatchedEvaluator(two_eos_model, pop, fitness)(3, members, 0.05, indices)
    assert batched == inplace
    assert len({f for f, _ in inplace}) > 1


def test_lowrank_directions_are_rank_r_antithetic_and_keyed(tiny_model):
    pop = LowRankPopulation(_params(tiny_model), seed=1, rank=2)
    name = "model.layers.0.mlp.up_proj.weight"
    d0, d1, d2 = (pop.direction(4, m, name) for m in (0, 1, 2))
    assert torch.linalg.matrix_rank(d0) == 2 and torch.equal(d1, -d0) and not torch.allclose(d2, d0)
    a, b = pop.factors(4, 0, name)
    assert torch.allclose(d0, a @ b.T) and torch.equal(pop.direction(4, 0, name), d0)
    other = "model.layers.0.mlp.gate_proj.weight"  # same shape, different key
    assert not torch.allclose(pop.direction(4, 0, other), d0)
    gain = "model.layers.0.input_layernorm.weight"
    assert torch.equal(pop.direction(4, 1, gain), -pop.direction(4, 0, gain))
    assert torch.equal(pop.perturbation(4, 3, name, 0.5), 0.5 * pop.direction(4, 3, name))


def test_lowrank_update_is_weighted_sum_of_low_rank_directions(tiny_model):
    pop = LowRankPopulation(_params(tiny_model), seed=1, rank=3)
    theta = {n: t.clone() for n, t in pop.master.items()}
    weights = [1.0, -0.5, 0.25, 2.0]
    pop.update(7, weights, alpha=0.1)
    name = "model.layers.0.self_attn.q_proj.weight"
    step = sum(w * pop.direction(7, m, name) for m, w in enumerate(weights))
    assert torch.allclose(pop.master[name], theta[name] + 0.1 / 4 * step, atol=1e-7)
    assert torch.equal(dict(tiny_model.named_parameters())[name].detach(), pop.master[name])


def test_lowrank_batched_equals_lowrank_inplace(lively_model, fitness):
    pop = LowRankPopulation(_params(lively_model), seed=5, rank=2)
    members, indices = range(6), [0, 1, 2]
    inplace = InplaceEvaluator(lively_model, pop, fitness)(2, members, 0.6, indices)
    batched = BatchedEvaluator(lively_model, pop, fitness, weights=LowRankWeights)(2, members, 0.6, indices)
    assert batched == inplace
    assert len({f for f, _ in inplace}) > 1


def test_lowrank_forward_matches_materialised_weights(lively_model, tokenizer):
    """Logit-level check, independent of greedy ties: x·θᵀ + (x·B)(σA)ᵀ equals x·(θ + σABᵀ)ᵀ."""
    pop = LowRankPopulation(_params(lively_model), seed=2, rank=4)
    members = [0, 1, 2]
    low = LowRankWeights(lively_model, pop, 0, members, 0.2)
    full = StackedWeights(lively_model, pop, 0, members, 0.2)
    q, k, v = (f"model.layers.0.self_attn.{p}_proj.weight" for p in "qkv")
    for rows in (5, 40):  # fewer rows than inputs (decode: low-rank path), more (prefill: materialised)
        x = torch.randn(3, rows, 32, generator=torch.Generator().manual_seed(rows))
        for names in [(q,), ("model.embed_tokens.weight",), (q, k, v)]:
            assert torch.allclose(low.linear(x, names), full.linear(x, names), atol=1e-5)
    assert torch.equal(full.linear(x, (q, k))[..., :32], full.linear(x, (q,)))
    ids = torch.randint(len(tokenizer), (3, 7), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(low.embed(ids, "model.embed_tokens.weight"), full.embed(ids, "model.embed_tokens.weight"),
                          atol=1e-6)


@pytest.mark.parametrize("mode", ["batched", "lowrank"])
def test_member_tokens_equal_hf_generate_of_the_perturbed_model(mode, lively_model, tokenizer):
    """Token for token: each member's rows of the population loop equal model.generate on θ + offset."""
    population, weights = ((Population(_params(lively_model), seed=9), StackedWeights) if mode == "batched"
                           else (LowRankPopulation(_params(lively_model), seed=9, rank=4), LowRankWeights))
    prompts = encode_prompts(tokenizer, [[{"role": "user", "content": c}] for c in ["hi", "Solve: 3 + 5 =", "ok?"]])
    members, sigma = [0, 1, 2, 3], 0.3
    out = PopulationDecoder(lively_model).generate(weights(lively_model, population, 1, members, sigma),
                                                   len(members), prompts, 16, tokenizer.pad_token_id,
                                                   stop_ids(lively_model, tokenizer))
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    for m in members:
        population.perturb(1, m, sigma)
        with torch.inference_mode():
            ref = lively_model.generate(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long(),
                                        max_new_tokens=16, do_sample=False)[:, width:]
        assert torch.equal(out[m, :, :ref.shape[1]], ref), m
    population.restore()
    assert not torch.equal(out[0], out[1])


def test_trainer_builds_the_configured_mode(tiny_model, fitness):
    from esft.errors import EsftError
    from esft.methods.es import ESConfig
    from esft.methods.es.modes import build_evaluator
    from esft.methods.es.trainer import ESTrainer

    for mode, pop_type, weights in [("batched", Population, StackedWeights), ("lowrank", LowRankPopulation, LowRankWeights)]:
        trainer = ESTrainer(tiny_model, fitness, len(fitness.rows), ESConfig(population=4, mode=mode, rank=3))
        assert type(trainer.population) is pop_type and trainer.evaluator.local.weights is weights
    assert ESTrainer(tiny_model, fitness, len(fitness.rows), ESConfig(rank=3, mode="lowrank")).population.rank == 3
    trainer = ESTrainer(tiny_model, fitness, len(fitness.rows), ESConfig(population=4))
    assert isinstance(trainer.evaluator.local, InplaceEvaluator)
    with pytest.raises(EsftError, match="unknown es.mode"):
        build_evaluator("sharded", tiny_model, trainer.population, fitness)
    with pytest.raises(EsftError, match="generation"):
        build_evaluator("batched", tiny_model, trainer.population, lambda model, indices, member: (0.0, 0))
    with pytest.raises(EsftError, match="does not match"):
        build_evaluator("lowrank", tiny_model, trainer.population, fitness)
    with pytest.raises(EsftError, match="antithetic by construction"):
        ESConfig(mode="lowrank", antithetic="signed")
    with pytest.raises(EsftError, match="use mode inplace"):
        ESConfig(mode="batched", fitness="random")


@pytest.mark.parametrize("kind", ["plain", "antithetic", "lowrank"])
def test_stacked_perturbations_equal_each_members_bit_for_bit(tiny_model, kind):
    params = _params(tiny_model)
    scale = {n: 2.5 for n in params if "mlp" in n or "norm" in n}
    pop = (LowRankPopulation(params, seed=4, rank=2, sigma_scale=scale) if kind == "lowrank"
           else Population(params, seed=4, antithetic=kind == "antithetic", sigma_scale=scale))
    members = [5, 0, 1, 2, 3]
    for name in ["model.layers.0.mlp.up_proj.weight", "model.layers.0.post_attention_layernorm.weight"]:
        stacked = pop.perturbations(3, members, name, 0.1)
        for row, m in zip(stacked, members):
            assert torch.equal(row, pop.perturbation(3, m, name, 0.1)), (name, m)
    phased = Population(params, seed=4, phases=[{"model.norm.weight"}, {"model.embed_tokens.weight"}])
    assert not phased.perturbations(1, [0, 1], "model.norm.weight", 0.1).any()


def test_lowrank_group_sigma_scales_its_factors(tiny_model):
    from esft.methods.es import ESConfig
    from esft.methods.es.trainer import build_population

    name, gain = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.input_layernorm.weight"
    _, pop = build_population(copy.deepcopy(tiny_model), ESConfig(mode="lowrank", rank=2, group_sigma={"attn": 3.0}))
    _, ref = build_population(copy.deepcopy(tiny_model), ESConfig(mode="lowrank", rank=2))
    assert torch.allclose(pop.perturbation(1, 3, name, 0.1), 3.0 * ref.perturbation(1, 3, name, 0.1))
    assert torch.equal(pop.perturbation(1, 3, gain, 0.1), ref.perturbation(1, 3, gain, 0.1))
    a, b = pop.member_factors(1, [2, 3], name, 0.1)
    assert torch.allclose(a[1] @ b[1].T, pop.perturbation(1, 3, name, 0.1), atol=1e-7)
    assert torch.equal(a[0], -a[1]) and torch.equal(b[0], b[1])
    # the NES step divides by each tensor's own noise scale σ·σ_g
    theta = pop.master[name].clone()
    for p in (pop, ref):
        p.update(1, [1.0, -1.0], alpha=0.1, sigma=0.1)
    assert torch.allclose((pop.master[name] - theta) * 3.0, ref.master[name] - theta, atol=1e-7)
    assert not torch.equal(ref.master[name], theta)


def test_lowrank_group_sigma_batched_equals_inplace(lively_model, fitness):
    params = _params(lively_model)
    pop = LowRankPopulation(params, seed=5, rank=2, sigma_scale={n: 0.25 for n in params if "mlp" in n})
    members, indices = range(6), [0, 1, 2]
    inplace = InplaceEvaluator(lively_model, pop, fitness)(2, members, 0.6, indices)
    assert BatchedEvaluator(lively_model, pop, fitness, weights=LowRankWeights)(2, members, 0.6, indices) == inplace
    assert len({f for f, _ in inplace}) > 1


def test_lowrank_update_counts_an_unpaired_last_member(tiny_model):
    pop = LowRankPopulation(_params(tiny_model), seed=1, rank=1)
    theta = {n: t.clone() for n, t in pop.master.items()}
    weights = [0.5, -0.5, 2.0]
    pop.update(2, weights, alpha=0.3)
    for name in ["model.layers.0.mlp.down_proj.weight", "model.norm.weight"]:
        step = sum(w * pop.direction(2, m, name) for m, w in enumerate(weights))
        assert torch.allclose(pop.master[name], theta[name] + 0.3 / 3 * step, atol=1e-7), name


CHUNK_ROWS = [{"prompt": p, "target": t} for p, t in [("Solve: 3 + 5 =", "8"), ("Can penguins fly?", "No"),
                                                       ("ok?", "yes"), ("Name a colour please.", "red"),
                                                       ("hi", "hello there")]]


@pytest.mark.parametrize("mode", ["inplace", "batched", "lowrank"])
def test_generation_batch_size_chunks_give_the_one_pass_result(mode, lively_model, tokenizer):
    """1 row, 3 rows or all N×B rows per pass: the same greedy completions and bit-identical fitness."""
    pop = (LowRankPopulation(_params(lively_model), seed=5, rank=2) if mode == "lowrank"
           else Population(_params(lively_model), seed=5))
    members, indices = range(6), [0, 1, 2, 3, 4]
    outcomes = []
    for rows in (1, 3, len(members) * len(indices)):
        texts: list[list[str]] = []

        class Recording(TaskFitness):
            def score(self, completions, indices, member):
                texts.append(list(completions))
                return super().score(completions, indices, member)

        fitness = Recording(get_task("conciseness"), CHUNK_ROWS, tokenizer, MAX_NEW, generation_batch_size=rows)
        evaluator = (InplaceEvaluator(lively_model, pop, fitness) if mode == "inplace" else
                     BatchedEvaluator(lively_model, pop, fitness, LowRankWeights if mode == "lowrank" else StackedWeights))
        outcomes.append((evaluator(2, members, 0.3, indices), texts))
    assert outcomes[0] == outcomes[1] == outcomes[2]
    assert len({f for f, _ in outcomes[0][0]}) > 1 and len({t for ts in outcomes[0][1] for t in ts}) > 5


def test_decoder_tokens_do_not_depend_on_the_prompts_sharing_a_pass(lively_model, tokenizer):
    """Token for token: prompts decoded in chunks of 1 or 3 (each with its own width and KV cache) equal one pass."""
    pop = Population(_params(lively_model), seed=9)
    weights = StackedWeights(lively_model, pop, 1, [0, 1, 2], 0.3)
    prompts = encode_prompts(tokenizer, [[{"role": "user", "content": r["prompt"]}] for r in CHUNK_ROWS])
    decoder, stops = PopulationDecoder(lively_model), stop_ids(lively_model, tokenizer)
    whole = decoder.generate(weights, 3, prompts, 16, tokenizer.pad_token_id, stops)
    for size in (1, 3):
        for first in range(0, len(prompts), size):
            part = decoder.generate(weights, 3, prompts[first:first + size], 16, tokenizer.pad_token_id, stops)
            width = part.shape[-1]
            assert torch.equal(part, whole[:, first:first + size, :width])
            assert (whole[:, first:first + size, width:] == tokenizer.pad_token_id).all()


def test_pass_shape_fills_prompts_first_within_the_rows():
    from esft.methods.es.batched import pass_shape

    assert pass_shape(30, 200, 200) == (1, 200)          # the paper's shape: one member, every prompt
    assert pass_shape(30, 2, 64) == (30, 2)              # few prompts: the whole population in one pass
    assert pass_shape(30, 2, 64, members_per_pass=8) == (8, 2)
    assert pass_shape(6, 5, 1) == (1, 1) and pass_shape(6, 5, 3) == (1, 3) and pass_shape(6, 5, 11) == (2, 5)
    assert pass_shape(0, 5, 8) == (1, 5)                 # a rank without members decodes nothing
    for members in range(1, 9):
        for prompts in range(1, 9):
            for rows in range(1, 40):
                m, p = pass_shape(members, prompts, rows)
                assert m * p <= rows and 1 <= m <= members and 1 <= p <= prompts


@pytest.mark.parametrize("rows, members_per_pass, calls", [(4, None, [(1, 4), (1, 1)] * 6), (10, None, [(2, 5)] * 3),
                                                            (30, 4, [(4, 5), (2, 5)])])
def test_batched_passes_hold_at_most_generation_batch_size_rows(rows, members_per_pass, calls, lively_model,
                                                                tokenizer):
    """Each decoder call, whose KV cache holds its members × prompts rows, stays within generation_batch_size."""
    fitness = TaskFitness(get_task("conciseness"), CHUNK_ROWS, tokenizer, 4, generation_batch_size=rows)
    evaluator = BatchedEvaluator(lively_model, Population(_params(lively_model), seed=5), fitness,
                                 members_per_pass=members_per_pass)
    seen, decode = [], evaluator.decoder.generate

    def generate(weights, members, prompts, *args):
        seen.append((members, len(prompts)))
        return decode(weights, members, prompts, *args)

    evaluator.decoder.generate = generate
    assert len(evaluator(0, range(6), 0.1, [0, 1, 2, 3, 4])) == 6
    assert seen == calls
