"""Population evaluation modes behind one interface: (iteration, members, σ, prompts) -> fitness.

`inplace` writes each member into the full model, evaluates it and restores θ: any model size.
Other modes (batched, lowrank) evaluate many members in one forward pass and must return the same
numbers as `inplace` for the same seeds, within floating-point tolerance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import torch

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
