"""Population evaluation modes behind one interface: (iteration, members, σ, prompts) -> fitness.

`inplace` writes each member into the full model, evaluates it and restores θ: any model size.
`batched` (esft.methods.es.batched) and `lowrank` (esft.methods.es.lowrank) generate for many members at once, in passes
of at most `generation_batch_size` rows, with member offsets applied inside the forward; they return the
same numbers as `inplace` on the same seeds, within floating-point tolerance (`lowrank` as `inplace` on a
LowRankPopulation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import torch

from esft.errors import EsftError
from esft.methods.es.population import Population
from esft.noise import sampling_rng

Fitness = Callable[[torch.nn.Module, Sequence[int], int], tuple[float, int]]
"""(model, prompt indices, member) -> (fitness, generated tokens)."""


class Evaluator(Protocol):
    def __call__(self, iteration: int, members: Iterable[int], sigma: float,
                 indices: Sequence[int]) -> list[tuple[float, int]]:
        """(fitness, generated tokens) of each member, in the order given."""


class InplaceEvaluator:
    """Perturb the live model to one member at a time; θ is restored bit for bit afterwards.

    Each member is scored with the same sampling seed (common random numbers), from which every
    generation batch is seeded afresh (`esft.rollout.generate`), so sampled generation (es.temperature
    > 0) differs between members only through their weights, in every batch.
    """

    def __init__(self, model: torch.nn.Module, population: Population, fitness: Fitness) -> None:
        self.model = model
        self.population = population
        self.fitness = fitness

    def __call__(self, iteration: int, members: Iterable[int], sigma: float,
                 indices: Sequence[int]) -> list[tuple[float, int]]:
        results = []
        try:
            for member in members:
                self.population.perturb(iteration, member, sigma)
                with sampling_rng(self.population.seed, iteration):
                    results.append(self.fitness(self.model, indices, member))
        finally:
            self.population.restore()
        return results


MODES: tuple[str, ...] = ("inplace", "batched", "lowrank")


def build_evaluator(mode: str, model: torch.nn.Module, population: Population, fitness: Fitness,
                    members_per_pass: int | None = None) -> Evaluator:
    """The evaluator of `mode` for `population` (a LowRankPopulation for `lowrank`)."""
    if mode == "inplace":
        return InplaceEvaluator(model, population, fitness)
    if mode not in MODES:
        raise EsftError(f"unknown es.mode {mode!r}; allowed: {', '.join(MODES)}")
    from esft.methods.es.batched import BatchedEvaluator, StackedWeights
    from esft.methods.es.fitness import TaskFitness
    from esft.methods.es.lowrank import LowRankPopulation, LowRankWeights

    if not isinstance(fitness, TaskFitness):
        raise EsftError(f"es.mode {mode!r} needs a generation (task) fitness; use mode inplace")
    if (mode == "lowrank") != isinstance(population, LowRankPopulation):
        raise EsftError(f"es.mode {mode!r} does not match a {type(population).__name__}")
    weights = LowRankWeights if mode == "lowrank" else StackedWeights
    return BatchedEvaluator(model, population, fitness, weights, members_per_pass)
