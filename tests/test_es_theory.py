"""ES against theory: Proposition 1 on a flat landscape, gradient alignment and convergence on a
quadratic, and the variance reduction of antithetic pairs and rank shaping, all seeded."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from esft.methods.es import ESConfig, Population
from esft.methods.es.shaping import member_weights
from esft.methods.es.trainer import ESTrainer


class Vector(torch.nn.Module):
    """A bare parameter vector: the 'model' of the synthetic landscapes."""

    def __init__(self, values: torch.Tensor) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(values.clone())


def _final_drift(tmp_path, cfg: ESConfig, dim: int) -> float:
    trainer = ESTrainer(Vector(torch.zeros(dim)), None, 1, cfg)
    trainer.train()
    trainer.write_outputs(tmp_path)
    drift = pd.read_parquet(tmp_path / "drift.parquet")
    assert len(drift) == cfg.iterations  # one tensor, one row per iteration
    return float(drift[drift.iteration == cfg.iterations - 1].drift_sq.sum())


@pytest.mark.parametrize("antithetic", ["none", "mirrored", "signed"])
def test_flat_landscape_is_a_random_walk_with_proposition_1_rate(tmp_path, antithetic):
    """random fitness + z-scores: E||θ_T − θ_0||² = T·α²·D/N (Σzᵢ² = N); with mirrored pairs the pair
    weights z⁺ − z⁻ have E Σ (z⁺−z⁻)² = N + N/(N−1), since distinct z-scores correlate by −1/(N−1); with
    signed pairs (EA4LLM eq. 10: z of sⱼ·Fⱼ, a pair adding z⁺ + z⁻) E Σ (z⁺+z⁻)² = N − N/(N−1)."""
    dim, n, iterations, alpha, trials = 2000, 10, 20, 0.05, 40
    measured = sum(
        _final_drift(tmp_path / str(seed), ESConfig(population=n, sigma=0.1, alpha=alpha, iterations=iterations,
                                                    fitness="random", antithetic=antithetic, seed=seed), dim)
        for seed in range(trials)
    ) / trials
    per_step = {"none": n, "mirrored": n + n / (n - 1), "signed": n - n / (n - 1)}[antithetic] / n**2
    expected = iterations * alpha**2 * dim * per_step
    assert abs(measured / expected - 1) < 0.05, (measured, expected)


def _quadratic(h: torch.Tensor, target: torch.Tensor):
    """F(θ) = −½ Σ hᵢ(θᵢ − θ*ᵢ)², its gradient, and an ES fitness reading the live parameter."""
    def value(theta: torch.Tensor) -> float:
        return float(-0.5 * (h * (theta - target) ** 2).sum())

    def fitness(model, indices, member):
        return value(model.w.detach()), 0

    return value, (lambda theta: -h * (theta - target)), fitness


def _landscape(dim: int = 16):
    gen = torch.Generator().manual_seed(0)
    h = torch.linspace(0.5, 2.0, dim)
    target = torch.randn(dim, generator=gen)
    return h, target, torch.zeros(dim)


def test_large_population_step_aligns_with_the_gradient_and_converges():
    h, target, theta0 = _landscape()
    value, grad, fitness = _quadratic(h, target)
    # one z-scored standard step with N ≫ D points along ∇F (cos ≈ (1 + D/N)^-½ ≈ 0.99)
    trainer = ESTrainer(Vector(theta0), fitness, 1, ESConfig(population=800, sigma=0.01, alpha=0.1, iterations=1))
    trainer.train()
    step = trainer.population.master["w"] - theta0
    cosine = float(torch.nn.functional.cosine_similarity(step, grad(theta0), dim=0))
    assert cosine > 0.9, cosine
    # raw paired differences with the NES step are gradient ascent with lr α: converges geometrically
    cfg = ESConfig(population=200, sigma=0.05, alpha=0.5, iterations=40, shaping="raw", step="nes",
                   antithetic="paired")
    trainer = ESTrainer(Vector(theta0), fitness, 1, cfg)
    records = trainer.train()
    final = trainer.population.master["w"]
    assert float((final - target).norm()) < 0.01 * float((theta0 - target).norm())
    assert records[-1]["fitness_mean"] > records[0]["fitness_mean"]


def _estimates(antithetic: str, shaping: str, step: str, trials: int = 300, n: int = 20, sigma: float = 0.1):
    """ES updates at θ_0 over `trials` seeds, computed through the engine's own perturbation and update."""
    h, target, theta0 = _landscape(8)
    value, grad, _ = _quadratic(h, target)
    estimates = []
    for seed in range(trials):
        pop = Population({"w": torch.nn.Parameter(theta0.clone())}, seed, antithetic=antithetic != "none")
        fitness = [value(pop.master["w"] + pop.perturbation(0, m, "w", sigma)) for m in range(n)]
        weights = member_weights(fitness, shaping, antithetic)
        (_, delta), = pop.steps(0, weights, alpha=1.0, sigma=sigma if step == "nes" else None)
        estimates.append(delta)
    return torch.stack(estimates), grad(theta0)


def _relative_variance(estimates: torch.Tensor) -> float:
    """tr Cov(ĝ) / ||E ĝ||²: the estimator's noise relative to its signal, invariant to its scale."""
    mean = estimates.mean(0)
    return float((estimates - mean).pow(2).sum(1).mean() / mean.pow(2).sum())


def test_antithetic_pairs_and_rank_shaping_reduce_estimator_variance():
    plain, g = _estimates("none", "raw", "nes")
    paired, _ = _estimates("paired", "raw", "nes")
    signed, _ = _estimates("signed", "raw", "nes")
    ranked, _ = _estimates("none", "rank", "standard")
    # raw estimators are unbiased for ∇F: their means agree with the gradient
    for est in (plain, paired):
        assert float(torch.nn.functional.cosine_similarity(est.mean(0), g, dim=0)) > 0.9
    v_plain, v_paired, v_signed, v_rank = map(_relative_variance, (plain, paired, signed, ranked))
    # pairs cancel the baseline F(θ) and every even-order term; rank shaping removes the baseline
    assert v_paired < 0.1 * v_plain, (v_paired, v_plain)
    assert v_signed < 0.1 * v_plain, (v_signed, v_plain)
    assert v_rank < 0.1 * v_plain, (v_rank, v_plain)
    # on a quadratic raw pair differences are exactly 2σ(∇F·ε): noise is then (D+1)/P relative
    dim, pairs = g.numel(), 10
    assert v_paired == pytest.approx((dim + 1) / pairs, rel=0.25)
