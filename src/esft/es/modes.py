"""Population evaluation modes behind one interface: (iteration, members, σ, prompts) -> fitness.

`inplace` writes each member into the full model, evaluates it and restores θ: any model size.
`batched` (esft.es.batched) and `lowrank` (esft.es.lowrank) generate for the whole population in one
loop with member offsets applied inside the forward; they return the same numbers as `inplace` on the
same seeds, within floating-point tolerance (`lowrank` as `inplace` on a LowRankPopulation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal, Protocol

import torch

from esft.errors import EsftError
from esft.es.population import Population

Fitness = Callable[[torch.nn.Module, Sequence[int], int], tuple[float, int]]
"""(model, prompt indices, member) -> (fitness, generated tokens)."""


class Evaluator(Protocol):
    def __call__(self, iteration: int, members: Iterable[int], sigma: float,
                 indices: Sequence[int]) -> list[tuple[float, int]]:
        """(fitness, generated tokens) of each member, in the order given."""


class InplaceEvaluator:
    """Perturb the live model to one member at a time; θ is restored bit for bit afterwards."""

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
                results.append(self.fitness(self.model, indices, member))
        finally:
            self.population.restore()
        return results


Mode = Literal["inplace", "batched", "lowrank"]
MODES: tuple[str, ...] = ("inplace", "batched", "lowrank")


def build_mode(mode: Mode, model: torch.nn.Module, params: dict[str, torch.nn.Parameter], seed: int,
               fitness: Fitness, rank: int = 1, members_per_pass: int | None = None) -> tuple[Population, Evaluator]:
    """The population (whose directions the update uses) and the evaluator of one mode."""
    if mode == "inplace":
        population = Population(params, seed)
        return population, InplaceEvaluator(model, population, fitness)
    if mode not in MODES:
        raise EsftError(f"unknown es.mode {mode!r}; allowed: {', '.join(MODES)}")
    from esft.es.batched import BatchedEvaluator, StackedWeights
    from esft.es.fitness import TaskFitness
    from esft.es.lowrank import LowRankPopulation, LowRankWeights

    if not isinstance(fitness, TaskFitness):
        raise EsftError(f"es.mode {mode!r} needs a generation (task) fitness; use mode inplace")
    if mode == "batched":
        population = Population(params, seed)
        return population, BatchedEvaluator(model, population, fitness, StackedWeights, members_per_pass)
    population = LowRankPopulation(params, seed, rank)
    return population, BatchedEvaluator(model, population, fitness, LowRankWeights, members_per_pass)
