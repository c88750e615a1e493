"""Fitness sources: corpus log-likelihood (masked, pretrains from scratch), the random diagnostic,
and task rewards that stop the run on NaN or a raising grader."""

from __future__ import annotations

import math

import pytest
import torch

from esft.errors import EsftError
from esft.methods.es import ESConfig
from esft.methods.es.fitness import CorpusFitness, FitnessError, RandomFitness, TaskFitness
from esft.methods.es.trainer import ESTrainer

CORPUS = ["the cat sat on the mat.", "a dog ran.", "the cat sat on the mat. the cat sat on the mat."]


def test_loglik_masks_padding_and_averages_per_sample_or_per_token(tiny_model, tokenizer):
    """EA4LLM eqs. (2)-(3), the default: each text's mean token log-likelihood, then the mean over texts;
    `token` pools the minibatch's tokens, so the long text weighs more."""
    fit = CorpusFitness(CORPUS, tokenizer, batch_size=8, average="token")
    alone = [fit(tiny_model, [i], member=0) for i in range(3)]
    together, tokens = fit(tiny_model, [0, 1, 2], member=0)
    assert tokens == sum(n for _, n in alone)
    assert together == pytest.approx(sum(v * n for v, n in alone) / tokens, rel=1e-5)
    per_sample, same_tokens = CorpusFitness(CORPUS, tokenizer, batch_size=8)(tiny_model, [0, 1, 2], member=0)
    assert same_tokens == tokens and per_sample == pytest.approx(sum(v for v, _ in alone) / 3, rel=1e-5)
    assert abs(per_sample - together) > 1e-4  # the texts differ in length and in mean log-likelihood
    # a single text against the model's own loss on the unpadded sequence
    ids = torch.tensor([tokenizer(CORPUS[1], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]])
    with torch.no_grad():
        loss = float(tiny_model(input_ids=ids, labels=ids).loss)
    assert alone[1][0] == pytest.approx(-loss, rel=1e-5)
    # batching (and therefore padding) does not change the value
    assert CorpusFitness(CORPUS, tokenizer, batch_size=1)(tiny_model, [0, 1, 2], 0)[0] == pytest.approx(per_sample, rel=1e-5)


def test_loglik_stops_on_a_non_finite_value(tiny_model, tokenizer):
    with torch.no_grad():
        tiny_model.model.norm.weight.fill_(float("nan"))
    with pytest.raises(FitnessError, match=r"member 3, texts \[1\]: log-likelihood is nan"):
        CorpusFitness(CORPUS, tokenizer, batch_size=8)(tiny_model, [1], member=3)


def test_es_on_loglik_pretrains_a_from_scratch_model(tiny_model, tokenizer):
    texts = ["abcabcabcabc", "abcabc", "cabcab"] * 2
    fit = CorpusFitness(texts, tokenizer, batch_size=8)
    before = fit(tiny_model, range(len(texts)), 0)[0]
    cfg = ESConfig(population=16, sigma=0.05, alpha=0.03, iterations=40, batch_size=3, shaping="rank",
                   antithetic="mirrored", fitness="loglik", seed=1)
    ESTrainer(tiny_model, fit, len(texts), cfg).train()  # the model ends at θ_T
    after = fit(tiny_model, range(len(texts)), 0)[0]
    assert after > before + 0.5, (before, after)  # nats per token, from about −log(vocab)


def test_random_fitness_is_seeded_iid_and_ignores_the_model():
    fit = RandomFitness(seed=3)
    first = fit(0, range(200), 0.1, [0])
    assert first == fit(0, range(200), 99.0, [5])  # independent of σ, prompts (and θ: no model at all)
    assert [v for v, _ in first] != [v for v, _ in fit(1, range(200), 0.1, [0])]
    assert [v for v, _ in first] != [v for v, _ in RandomFitness(4)(0, range(200), 0.1, [0])]
    values = [v for v, _ in first]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    assert abs(mean) < 0.25 and abs(std - 1) < 0.15


class _Echo:
    """A stand-in task: the reward function is chosen by the test."""

    def __init__(self, reward):
        self.reward = reward

    def messages(self, row):
        return [{"role": "user", "content": row["q"]}]


@pytest.mark.parametrize("reward, match", [
    (lambda text, row: float("nan") if row["q"] == "b" else 1.0, r"member 0, prompt 1: reward is nan"),
    (lambda text, row: 1.0 / 0 if row["q"] == "c" else 1.0, r"member 0, prompt 2: reward function raised"),
])
def test_bad_reward_stops_the_run_naming_member_and_prompt(tiny_model, tokenizer, reward, match):
    rows = [{"q": "a"}, {"q": "b"}, {"q": "c"}]
    fit = TaskFitness(_Echo(reward), rows, tokenizer, max_new_tokens=2, generation_batch_size=4)
    trainer = ESTrainer(tiny_model, fit, len(rows), ESConfig(population=2, iterations=2))
    with pytest.raises(FitnessError, match=match):
        trainer.train()
    assert trainer.records == []  # nothing was averaged or logged


def _recording_fitness(tokenizer, n_rows: int, generation_batch_size: int, temperature: float = 1.5,
                       top_p: float = 1.0) -> tuple[TaskFitness, list[list[str]]]:
    """Sampled conciseness fitness on `n_rows` prompts that records every scored batch."""
    from esft.tasks import get_task

    seen: list[list[str]] = []

    class Recording(TaskFitness):
        def score(self, texts, indices, member):
            seen.append(list(texts))
            return super().score(texts, indices, member)

    rows = [{"prompt": f"Say {i}", "target": "x" * i} for i in range(1, n_rows + 1)]
    return Recording(get_task("conciseness"), rows, tokenizer, max_new_tokens=12,
                     generation_batch_size=generation_batch_size, temperature=temperature, top_p=top_p), seen


def test_sampled_fitness_uses_common_random_numbers(tiny_model, tokenizer):
    """With temperature > 0 every member of an iteration samples with the same seed; iterations differ."""
    import torch

    from esft.methods.es import Population
    from esft.methods.es.modes import InplaceEvaluator

    model = tiny_model
    fitness, seen = _recording_fitness(tokenizer, 6, generation_batch_size=8)
    evaluator = InplaceEvaluator(model, Population(dict(model.named_parameters()), seed=3), fitness)
    state = torch.random.get_rng_state()
    # σ = 0: every member is θ itself, so only the sampling seed could make their completions differ
    evaluator(0, range(3), 0.0, list(range(6)))
    evaluator(1, range(1), 0.0, list(range(6)))
    assert seen[0] == seen[1] == seen[2]
    assert seen[3] != seen[0]
    assert len({t for texts in seen for t in texts}) > 6  # sampling, not greedy
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched


def test_top_p_sampling_keeps_common_random_numbers_and_truncates(tiny_model, tokenizer):
    """Issue 17, defect 4 (the paper's authors sample ES members at temperature 1, top-p 0.95): members with
    equal weights sample the same completions at top-p 0.95; a nucleus smaller than any token's mass leaves
    only the most likely token (greedy decoding), while the whole distribution does not."""
    from esft.methods.es import Population
    from esft.methods.es.modes import InplaceEvaluator

    runs = {}
    for top_p in (0.95, 1e-9, 1.0):
        fitness, seen = _recording_fitness(tokenizer, 6, generation_batch_size=8, temperature=1.0, top_p=top_p)
        evaluator = InplaceEvaluator(tiny_model, Population(dict(tiny_model.named_parameters()), seed=3), fitness)
        evaluator(0, range(3), 0.0, list(range(6)))  # σ = 0: three members with θ's weights
        assert seen[0] == seen[1] == seen[2], top_p
        runs[top_p] = seen[0]
    greedy, greedy_seen = _recording_fitness(tokenizer, 6, generation_batch_size=8, temperature=0.0)
    greedy(tiny_model, list(range(6)), 0)
    assert runs[1e-9] == greedy_seen[0] != runs[1.0]
    assert runs[0.95] != runs[1e-9]  # 0.95 still samples
    with pytest.raises(EsftError, match="es.top_p < 1 truncates sampling: set es.temperature > 0"):
        ESConfig(top_p=0.9)
    with pytest.raises(EsftError, match="in mode inplace only"):
        ESConfig(temperature=1.0, top_p=0.95, mode="batched")


def _first_call_cut_to_two_steps(model) -> None:
    """Make the model's first `generate` call stop after 2 new tokens, as a member's early eos would."""
    hf_generate, calls = model.generate, []

    def generate(*args, **kwargs):
        calls.append(kwargs["max_new_tokens"])
        return hf_generate(*args, **{**kwargs, "max_new_tokens": 2 if len(calls) == 1 else kwargs["max_new_tokens"]})

    model.generate = generate


def test_sampled_batches_do_not_depend_on_earlier_batches(tiny_model, tokenizer):
    """Common random numbers hold for every generation batch: a member whose first batch stops early
    samples its second batch exactly like a member whose first batch ran to max_new_tokens."""
    from esft.methods.es import Population
    from esft.methods.es.modes import InplaceEvaluator

    fitness, seen = _recording_fitness(tokenizer, 4, generation_batch_size=2)
    evaluator = InplaceEvaluator(tiny_model, Population(dict(tiny_model.named_parameters()), seed=3), fitness)
    _first_call_cut_to_two_steps(tiny_model)
    evaluator(0, range(2), 0.0, list(range(4)))  # σ = 0: both members are θ; member 0's first batch is cut
    assert [len(t) for t in seen[0][:2]] != [len(t) for t in seen[1][:2]]
    assert seen[0][2:] == seen[1][2:]


def test_sampled_generation_is_keyed_by_seed_and_batch_start(tiny_model, tokenizer):
    """Each batch samples from (seed, its start) alone: not from the caller's RNG, nor from how long
    the batches before it ran; the caller's RNG is left as it was."""
    from esft.rollout import encode_prompts, generate

    prompts = encode_prompts(tokenizer, [[{"role": "user", "content": "Say 1"}]] * 3)
    ref = generate(tiny_model, tokenizer, prompts, 12, batch_size=1, temperature=1.5, seed=7)
    torch.rand(1000)
    state = torch.random.get_rng_state()
    assert generate(tiny_model, tokenizer, prompts, 12, batch_size=1, temperature=1.5, seed=7) == ref
    assert torch.equal(torch.random.get_rng_state(), state)
    _first_call_cut_to_two_steps(tiny_model)
    cut = generate(tiny_model, tokenizer, prompts, 12, batch_size=1, temperature=1.5, seed=7)
    assert cut.n_tokens[0] == 2 and ref.n_tokens[0] > 2
    assert cut.texts[1:] == ref.texts[1:] and cut.n_tokens[1:] == ref.n_tokens[1:]
    other = generate(tiny_model, tokenizer, prompts, 12, batch_size=1, temperature=1.5, seed=8)
    assert other.texts != ref.texts
    assert len(set(ref.texts)) == 3  # one prompt three times: its batches differ by their start alone
