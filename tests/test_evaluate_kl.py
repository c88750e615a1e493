"""Incremental KL: exact per-position KL along sampled completions, chunked, keyed sampling, masks."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from esft.errors import EsftError
from esft.evaluate.kl import collect_kl, kl_along, kl_on_tasks, kl_prompt_indices, sample_completions
from esft.rollout import stop_ids
from esft.io import write_json
from esft.rollout import encode_prompts, generate


def _prompts(tokenizer, n: int) -> list[list[int]]:
    texts = ["2+2?", "Name a colour.", "Why is the sky blue? Answer briefly.", "x", "Count to three.", "ok?", "Q"]
    return encode_prompts(tokenizer, [[{"role": "user", "content": texts[i % len(texts)] * (1 + i // 7)}]
                                      for i in range(n)])


def _perturbed(model, scale: float = 0.05):
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return other


def _sample(model, tokenizer, prompts, keys, batch_size, temperature=1.0, max_new=10, stops=None):
    return sample_completions(model, prompts, keys, max_new, temperature, stops or stop_ids(model, tokenizer),
                              tokenizer.pad_token_id, batch_size)


# --- a hand-checkable pair of "models": the next-token distribution depends on the current token only ---
P = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
Q = torch.tensor([[0.25, 0.5, 0.25], [0.4, 0.4, 0.2], [0.9, 0.05, 0.05]])


class _Decoder(torch.nn.Module):
    def __init__(self, calls: list[torch.Tensor]):
        super().__init__()
        self.calls = calls

    def forward(self, input_ids, attention_mask):
        self.calls.append(input_ids.clone())
        return SimpleNamespace(last_hidden_state=torch.nn.functional.one_hot(input_ids, 3).float())


class TableLM(torch.nn.Module):
    """hidden = one-hot(token), logits = log table[token]: p(next | current token a) = table[a]."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.config = SimpleNamespace()
        self.head = torch.nn.Linear(3, 3, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(table.log().T)
        self.calls: list[torch.Tensor] = []
        self.decoder = _Decoder(self.calls)

    def get_decoder(self):
        return self.decoder

    def get_output_embeddings(self):
        return self.head


def _kl(a: int) -> float:
    return sum(float(p) * math.log(float(p) / float(q)) for p, q in zip(P[a], Q[a]))


@pytest.mark.parametrize("batch_size,chunk", [(1, 1), (2, 2), (8, 100)])
def test_kl_equals_hand_computation_and_masks_prompt_and_padding(batch_size, chunk):
    p_model, q_model = TableLM(P), TableLM(Q)
    prompts = [[0, 1], [1], [2, 2, 2, 0]]
    completions = [[2, 1], [0, 0, 2], [1]]
    # pad id 2 has the largest KL: scoring a pad (or a prompt) position would show
    out = kl_along(p_model, q_model, prompts, completions, pad_id=2, batch_size=batch_size, chunk_tokens=chunk)
    # completion token c of a prompt of length L is predicted at position L − 1 + c, from that token
    expected = [(_kl(1) + _kl(2), 2), (_kl(1) + _kl(0) + _kl(0), 3), (_kl(0), 1)]
    for (got, n), (want, m) in zip(out, expected):
        assert n == m
        assert got == pytest.approx(want, rel=1e-6)


def test_both_models_score_the_same_token_ids():
    p_model, q_model = TableLM(P), TableLM(Q)
    kl_along(p_model, q_model, [[0, 1], [1]], [[2, 1], [0, 0, 2]], pad_id=2, batch_size=2, chunk_tokens=4)
    assert len(p_model.calls) == len(q_model.calls) == 1
    assert torch.equal(p_model.calls[0], q_model.calls[0])
    assert p_model.calls[0].tolist() == [[0, 1, 2, 1], [1, 0, 0, 2]]


def test_kl_of_a_model_with_itself_is_zero(tiny_model, tokenizer):
    prompts = _prompts(tokenizer, 5)
    completions = _sample(tiny_model, tokenizer, prompts, list(range(5)), batch_size=4)
    out = kl_along(tiny_model, tiny_model, prompts, completions, tokenizer.pad_token_id, 3, 7)
    assert [s for s, _ in out] == [0.0] * 5
    assert [n for _, n in out] == [len(c) for c in completions]


def test_chunked_kl_equals_full_logits(tiny_model, tokenizer):
    other = _perturbed(tiny_model)
    prompts = _prompts(tokenizer, 6)
    completions = _sample(tiny_model, tokenizer, prompts, list(range(6)), batch_size=6)
    small = kl_along(tiny_model, other, prompts, completions, tokenizer.pad_token_id, batch_size=1, chunk_tokens=1)
    large = kl_along(tiny_model, other, prompts, completions, tokenizer.pad_token_id, batch_size=6,
                     chunk_tokens=10_000)
    for prompt, completion, (a, n), (b, m) in zip(prompts, completions, small, large):
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logp, logq = (torch.log_softmax(model(input_ids=ids).logits[0].float(), -1) for model in (tiny_model, other))
        span = slice(len(prompt) - 1, len(prompt) - 1 + len(completion))
        full = float((logp.exp() * (logp - logq)).sum(-1)[span].sum())
        assert n == m == len(completion)
        assert a > 0
        assert a == pytest.approx(full, rel=1e-4) and b == pytest.approx(full, rel=1e-4)


def test_sampling_is_reproducible_and_independent_of_batching(tiny_model, tokenizer):
    prompts = _prompts(tokenizer, 9)
    keys = [1000 + i for i in range(9)]
    one = _sample(tiny_model, tokenizer, prompts, keys, batch_size=1)
    assert _sample(tiny_model, tokenizer, prompts, keys, batch_size=4) == one
    assert _sample(tiny_model, tokenizer, prompts, keys, batch_size=64) == one
    order = list(reversed(range(9)))
    shuffled = _sample(tiny_model, tokenizer, [prompts[i] for i in order], [keys[i] for i in order], batch_size=4)
    assert shuffled == [one[i] for i in order]
    assert _sample(tiny_model, tokenizer, prompts, [k + 1 for k in keys], batch_size=4) != one


def test_greedy_sampling_matches_hf_generate(tiny_model, tokenizer):
    prompts = _prompts(tokenizer, 6)
    ours = _sample(tiny_model, tokenizer, prompts, [0] * 6, batch_size=3, temperature=0.0, max_new=12)
    assert ours == generate(tiny_model, tokenizer, prompts, 12, batch_size=6).ids


def test_sampling_stops_at_any_eos_id(tiny_model, tokenizer):
    tiny_model.generation_config.eos_token_id = [tokenizer.eos_token_id] + list(range(10, 60))
    stops = stop_ids(tiny_model, tokenizer)
    assert len(stops) == 51
    out = _sample(tiny_model, tokenizer, _prompts(tokenizer, 8), list(range(8)), batch_size=8, max_new=30)
    assert any(len(c) < 30 for c in out)
    for c in out:
        assert not set(c[:-1]) & set(stops)
        assert len(c) == 30 or c[-1] in stops


def test_kl_on_tasks_records_token_ids(tiny_model, tokenizer, tmp_path):
    from esft.tasks.prepare import prepare_task

    prepare_task("math", {"source": "synthetic", "seed": 3, "n_train": 2, "n_test": 12, "max_new_tokens": 6},
                 tmp_path / "math")
    cfg = {"prompts_per_task": 5, "samples_per_prompt": 2, "temperature": 1.0, "max_new_tokens": None, "seed": 0,
           "batch_size": 4, "chunk_tokens": 16}
    other = _perturbed(tiny_model)
    metrics, records = kl_on_tasks(tiny_model, other, tokenizer, {"math": tmp_path / "math"},
                                   {"math": {"max_new_tokens": 6}}, cfg)
    assert metrics["math"]["n_prompts"] == 5 and len(records) == 10
    assert metrics["math"]["n_tokens"] == sum(len(r["completion_ids"]) for r in records)
    assert metrics["math"]["kl"] == pytest.approx(sum(r["kl_sum"] for r in records) / metrics["math"]["n_tokens"])
    assert {r["index"] for r in records} == set(kl_prompt_indices(12, 5, 0, "math"))
    assert all(1 <= len(r["completion_ids"]) <= 6 and r["prompt_ids"] for r in records)
    same, _ = kl_on_tasks(tiny_model, tiny_model, tokenizer, {"math": tmp_path / "math"},
                          {"math": {"max_new_tokens": 6}}, cfg)
    assert same["math"]["kl"] == 0.0


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_sampled_estimators_converge_to_the_exact_kl(tiny_model, tokenizer, direction):
    """Issue 17, defect 7: the authors' single-token estimates (k1 in their ES code, k3 in their GRPO code) of
    KL(p ‖ q), averaged over many completions sampled from p, agree with the exact KL at the same positions,
    in either direction, and the two directions differ."""
    other = _perturbed(tiny_model, 0.1)
    p, q = (tiny_model, other) if direction == "forward" else (other, tiny_model)
    prompts = _prompts(tokenizer, 8) * 300
    completions = _sample(p, tokenizer, prompts, list(range(len(prompts))), batch_size=800, max_new=4)
    kl = {}
    for estimator in ("exact", "k1", "k3"):
        scores = kl_along(p, q, prompts, completions, tokenizer.pad_token_id, 800, 8192, estimator)
        kl[estimator] = sum(s for s, _ in scores) / sum(n for _, n in scores)
    assert kl["exact"] > 0.02
    assert kl["k1"] == pytest.approx(kl["exact"], rel=0.06) and kl["k3"] == pytest.approx(kl["exact"], rel=0.06)
    with pytest.raises(EsftError, match="unknown KL estimator 'k2'"):
        kl_along(p, q, prompts[:1], completions[:1], tokenizer.pad_token_id, 1, 16, "k2")


def test_reverse_direction_samples_from_the_checkpoint(tiny_model, tokenizer, tmp_path):
    """direction reverse is KL(checkpoint ‖ reference), sampled from the checkpoint: the forward KL of the
    swapped pair, completion for completion."""
    from esft.tasks.prepare import prepare_task

    prepare_task("math", {"source": "synthetic", "seed": 3, "n_train": 2, "n_test": 12, "max_new_tokens": 6},
                 tmp_path / "math")
    cfg = {"prompts_per_task": 5, "samples_per_prompt": 2, "temperature": 1.0, "max_new_tokens": None, "seed": 0,
           "batch_size": 4, "chunk_tokens": 16, "estimator": "k3"}
    other, data, tasks = _perturbed(tiny_model), {"math": tmp_path / "math"}, {"math": {"max_new_tokens": 6}}
    reverse = kl_on_tasks(tiny_model, other, tokenizer, data, tasks, {**cfg, "direction": "reverse"})
    swapped = kl_on_tasks(other, tiny_model, tokenizer, data, tasks, {**cfg, "direction": "forward"})
    assert reverse[1] == swapped[1]
    assert reverse[0]["math"] == {**swapped[0]["math"], "direction": "reverse"}
    assert reverse[0]["math"]["estimator"] == "k3"


def test_collect_kl_and_heatmap(tmp_path):
    from esft.plots.figures import kl_sequential

    files = {}
    for label, value in [("es/sequential/1-math", 0.1), ("es/sequential/2-boolq", 0.2), ("es/single/1-math", 0.3)]:
        for reference in ("base", "previous"):
            path = tmp_path / f"{label.replace('/', '_')}_{reference}.json"
            write_json(path, {"math": {"kl": value, "n_prompts": 4, "n_tokens": 20},
                              "boolq": {"kl": value / 2, "n_prompts": 4, "n_tokens": 10}})
            files[label, reference] = path
    df = collect_kl(files)
    assert list(df.columns) == ["seed", "method", "schedule", "stage", "trained_task", "eval_task", "reference", "kl",
                                "n_prompts", "n_tokens", "direction", "estimator"]
    assert len(df) == 12 and set(df["reference"]) == {"base", "previous"}
    outs = [tmp_path / "kl.png", tmp_path / "kl.pdf"]
    kl_sequential(df, outs, dpi=40)
    assert outs[0].read_bytes()[:4] == b"\x89PNG" and outs[1].read_bytes()[:4] == b"%PDF"
    with pytest.raises(ValueError, match="no sequential"):
        kl_sequential(df[df["schedule"] == "single"], outs, dpi=40)
    assert isinstance(df, pd.DataFrame)


def test_sampled_tokens_follow_the_tempered_distribution(tiny_model, tokenizer):
    prompt = _prompts(tokenizer, 1)[0]
    with torch.no_grad():
        tiny_model.model.norm.weight.mul_(5)  # logits × 5: far from uniform, so a wrong sampler shows
        logits = tiny_model(input_ids=torch.tensor([prompt])).logits[0, -1].double()
    for temperature in (1.0, 0.5):
        firsts = [c[0] for c in _sample(tiny_model, tokenizer, [prompt] * 4000, list(range(4000)), batch_size=1000,
                                        temperature=temperature, max_new=1)]
        freq = torch.bincount(torch.tensor(firsts), minlength=logits.shape[0]).double() / len(firsts)
        probs = torch.softmax(logits / temperature, -1)
        # total variation against the value expected from sampling noise alone, E|f − p| ≈ √(2p(1−p)/πn)
        noise = 0.5 * float((2 * probs * (1 - probs) / (math.pi * len(firsts))).sqrt().sum())
        assert 0.5 * float((freq - probs).abs().sum()) < 1.3 * noise


def test_completions_are_sampled_from_the_earlier_model(tiny_model, tokenizer, tmp_path):
    """KL(π_{k−1} ‖ π_k) samples from the earlier model: kl_on_tasks(earlier, later) draws the completions
    that the earlier model draws alone, not the later model's, and swapping the two changes the KL."""
    from esft.tasks.prepare import prepare_task

    prepare_task("math", {"source": "synthetic", "seed": 3, "n_train": 2, "n_test": 12, "max_new_tokens": 6},
                 tmp_path / "math")
    cfg = {"prompts_per_task": 5, "samples_per_prompt": 2, "temperature": 1.0, "max_new_tokens": None, "seed": 0,
           "batch_size": 4, "chunk_tokens": 16}
    later = _perturbed(tiny_model)

    def run(p, q):
        return kl_on_tasks(p, q, tokenizer, {"math": tmp_path / "math"}, {"math": {"max_new_tokens": 6}}, cfg)

    def ids(records):
        return [r["completion_ids"] for r in records]

    forward, records = run(tiny_model, later)
    (_, alone_earlier), (_, alone_later) = run(tiny_model, tiny_model), run(later, later)
    assert ids(alone_earlier) != ids(alone_later)  # the two models sample different completions
    assert ids(records) == ids(alone_earlier)
    backward, _ = run(later, tiny_model)
    assert forward["math"]["kl"] > 0 and backward["math"]["kl"] != forward["math"]["kl"]
