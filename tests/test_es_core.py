"""ES numerics: per-tensor noise keying, exact restore, the update rule, fitness shaping."""

from __future__ import annotations

import math

import pytest
import torch

from esft.methods.es import ESConfig, Population, shape_fitness
from esft.methods.es.trainer import ESTrainer
from esft.noise import noise_key, tensor_noise
from esft.runs import minibatch


def _params(model):
    return {n: p for n, p in model.named_parameters()}


def test_noise_is_keyed_per_tensor_and_reproducible():
    like = torch.zeros(64, 32)
    a = tensor_noise(like, 0, 3, 5, "layer.weight")
    assert torch.equal(a, tensor_noise(like, 0, 3, 5, "layer.weight"))
    # any field of the key changes the stream
    for other in [(1, 3, 5, "layer.weight"), (0, 4, 5, "layer.weight"), (0, 3, 6, "layer.weight"),
                  (0, 3, 5, "other.weight")]:
        assert not torch.allclose(a, tensor_noise(like, *other))
    # same-shaped tensors of one member never share a stream
    assert noise_key(0, 0, 0, "a") != noise_key(0, 0, 0, "b")
    assert a.dtype == torch.float32 and abs(float(a.mean())) < 0.1 and abs(float(a.std()) - 1) < 0.05


def test_noise_does_not_depend_on_global_rng():
    like = torch.zeros(10)
    torch.manual_seed(1)
    a = tensor_noise(like, 7, 0, 0, "w")
    torch.manual_seed(2)
    torch.randn(100)
    assert torch.equal(a, tensor_noise(like, 7, 0, 0, "w"))


def test_perturb_then_restore_is_bitwise_exact(tiny_model):
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    pop = Population(_params(tiny_model), seed=3)
    for member in range(4):
        pop.perturb(0, member, sigma=0.5)
        assert any(not torch.equal(p, before[n]) for n, p in tiny_model.named_parameters())
        pop.restore()
    for n, p in tiny_model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_perturbation_is_theta_plus_sigma_eps(tiny_model):
    pop = Population(_params(tiny_model), seed=3)
    pop.perturb(2, 1, sigma=0.25)
    for n, p in tiny_model.named_parameters():
        expected = pop.master[n] + 0.25 * tensor_noise(pop.master[n], 3, 2, 1, n)
        assert torch.equal(p.detach(), expected)


def test_bf16_model_keeps_fp32_master_and_restores_exactly(tiny_model):
    model = tiny_model.to(torch.bfloat16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pop = Population(_params(model), seed=0)
    assert all(t.dtype == torch.float32 for t in pop.master.values())
    for member in range(3):
        pop.perturb(0, member, sigma=0.01)
        pop.restore()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])
    # an update far below bf16 resolution is kept in the master, not rounded away
    pop.update(0, [1.0, -1.0, 0.5], alpha=1e-6)
    moved = sum(int((pop.master[n] != before[n].float()).sum()) for n in pop.master)
    assert moved > 0.9 * sum(t.numel() for t in pop.master.values())


def test_update_matches_formula(tiny_model):
    pop = Population(_params(tiny_model), seed=11)
    theta = {n: t.clone() for n, t in pop.master.items()}
    weights, alpha = [1.5, -0.5, 0.0, -1.0], 0.01
    pop.update(4, weights, alpha)
    for n, t in pop.master.items():
        step = sum(w * tensor_noise(theta[n], 11, 4, i, n) for i, w in enumerate(weights))
        torch.testing.assert_close(t, theta[n] + alpha / len(weights) * step, rtol=0, atol=1e-7)
    # the live model holds the new master
    for n, p in tiny_model.named_parameters():
        assert torch.equal(p.detach(), pop.master[n])


def test_zscore_uses_population_std():
    z = shape_fitness([1.0, 2.0, 3.0, 6.0], "zscore")
    assert math.isclose(sum(z), 0.0, abs_tol=1e-12)
    assert math.isclose(sum(v * v for v in z), 4.0, rel_tol=1e-12)  # Σz² = N
    assert shape_fitness([2.0, 2.0, 2.0], "zscore") == [0.0, 0.0, 0.0]


def test_rank_shaping_is_centred_with_ties():
    assert shape_fitness([10.0, -3.0, 5.0], "rank") == [1.0, -1.0, 0.0]
    assert shape_fitness([1.0, 1.0, 2.0], "rank") == [-0.5, -0.5, 1.0]
    with pytest.raises(ValueError, match="allowed"):
        shape_fitness([1.0, 2.0], "softmax")


def test_minibatch_is_seeded_and_shared():
    assert minibatch(1, 0, 10, 4) == minibatch(1, 0, 10, 4)
    assert minibatch(1, 0, 10, 4) != minibatch(1, 1, 10, 4)
    assert minibatch(1, 0, 5, None) == [0, 1, 2, 3, 4]


def test_es_config_rejects_bad_values():
    with pytest.raises(ValueError, match="population"):
        ESConfig(population=1)
    with pytest.raises(ValueError, match="unknown es option"):
        ESConfig.from_dict({"sigmaa": 0.1})


def _quadratic_fitness(target):
    def fitness(model, indices, member):
        params = dict(model.named_parameters())
        return -float(sum(((params[n].detach() - target[n]) ** 2).sum() for n in target)), 0
    return fitness


def test_es_climbs_a_quadratic_and_resumes_identically(tiny_model, tmp_path):
    """ES improves a smooth objective; a run stopped and resumed from state equals an uninterrupted one."""
    target = {n: torch.zeros_like(p) for n, p in tiny_model.named_parameters()}
    init = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    cfg = ESConfig(population=8, sigma=0.02, alpha=0.01, iterations=6, checkpoint_every=2)
    full = ESTrainer(tiny_model, _quadratic_fitness(target), 1, cfg)
    records = full.train()
    assert records[-1]["fitness_mean"] > records[0]["fitness_mean"]

    with torch.no_grad():
        for n, p in tiny_model.named_parameters():
            p.copy_(init[n])
    calls = {"n": 0}

    def killed_at_iteration_5(model, indices, member):
        calls["n"] += 1
        if calls["n"] > 5 * cfg.population:
            raise KeyboardInterrupt  # the job dies mid-iteration
        return _quadratic_fitness(target)(model, indices, member)

    with pytest.raises(KeyboardInterrupt):
        ESTrainer(tiny_model, killed_at_iteration_5, 1, cfg, state_dir=tmp_path).train()
    assert (tmp_path / "state.safetensors").exists()
    with torch.no_grad():
        for n, p in tiny_model.named_parameters():
            p.copy_(init[n])
    resumed = ESTrainer(tiny_model, _quadratic_fitness(target), 1, cfg, state_dir=tmp_path)
    resumed.train()
    assert [r["fitness"] for r in resumed.records] == [r["fitness"] for r in records]
    for n in full.population.master:
        assert torch.equal(resumed.population.master[n], full.population.master[n])
