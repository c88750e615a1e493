"""`batched` mode: the population in greedy generation loops, member offsets inside the forward.

Each member's weights θ + Population.perturbation(...) are stacked once per group of members ([M, out, in]
per matrix, cast to the model's dtype exactly as `Population.perturb` casts them; an
`esft.rollout.decoder.MemberStack`), and every linear layer becomes one bmm over the member dimension, so
the arithmetic per token equals unperturbed inference.
Memory is one copy of the evolved weights per member of a group: this mode is for small models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from esft.methods.es.fitness import TaskFitness
from esft.methods.es.population import Population
from esft.rollout import decode_completions, stop_ids
from esft.rollout.decoder import MemberStack, MemberWeights, PopulationDecoder


class StackedWeights(MemberStack):
    """Full-rank per-member weights θ + σεₘ for every evolved tensor; frozen tensors stay shared."""

    def __init__(self, model: torch.nn.Module, population: Population, iteration: int, members: Sequence[int],
                 sigma: float, names: Iterable[str] | None = None) -> None:
        """Stack the tensors `names` (default: every evolved tensor) for `members`."""
        dtypes = {n: p.dtype for n, p in model.named_parameters(remove_duplicate=False)}
        super().__init__(model, {
            name: population.perturbations(iteration, members, name, sigma).add_(population.master[name])
            .to(dtypes[name])
            for name in (population.master if names is None else names)
        })


WeightsFactory = Callable[[torch.nn.Module, Population, int, Sequence[int], float], MemberWeights]


def pass_shape(members: int, prompts: int, rows: int, members_per_pass: int | None = None) -> tuple[int, int]:
    """(members, prompts) of one generation pass of a population: at most `rows` rows (members × prompts).

    Prompts are filled first: a batched pass reads each of its members' weights once per token, so more
    prompts per member read fewer weights per generated token. Then as many members as still fit, at most
    `members_per_pass` (None: the whole population) and always at least one.
    """
    per_pass = min(prompts, rows)
    return max(1, min(members_per_pass or members, members, rows // per_pass)), per_pass


class BatchedEvaluator:
    """Generate for many members at once, in passes of at most `fitness.generation_batch_size` rows
    (`pass_shape`): each member group's weights are built once and decode the prompts chunk by chunk.

    The decoder sizes each pass's KV cache to its own rows and its own longest prompt plus max_new_tokens,
    and a row's greedy tokens do not depend on which rows share its pass, so any chunking gives the same
    fitness as one pass of every row.
    """

    def __init__(self, model: torch.nn.Module, population: Population, fitness: TaskFitness,
                 weights: WeightsFactory = StackedWeights, members_per_pass: int | None = None) -> None:
        self.model = model
        self.population = population
        self.fitness = fitness
        self.weights = weights
        self.members_per_pass = members_per_pass
        self.decoder = PopulationDecoder(model)
        self.stops = stop_ids(model, fitness.tokenizer)

    def __call__(self, iteration: int, members: Iterable[int], sigma: float,
                 indices: Sequence[int]) -> list[tuple[float, int]]:
        members = list(members)
        step, per_pass = pass_shape(len(members), len(indices), self.fitness.generation_batch_size,
                                    self.members_per_pass)
        tok = self.fitness.tokenizer
        prompts = [self.fitness.prompt_ids[i] for i in indices]
        results = []
        for start in range(0, len(members), step):
            group = members[start:start + step]
            weights = self.weights(self.model, self.population, iteration, group, sigma)
            rows: list[list[list[int]]] = [[] for _ in group]
            for first in range(0, len(prompts), per_pass):
                tokens = self.decoder.generate(weights, len(group), prompts[first:first + per_pass],
                                               self.fitness.max_new_tokens, tok.pad_token_id, self.stops)
                for member_rows, chunk in zip(rows, tokens.tolist()):
                    member_rows.extend(chunk)
            for member, member_rows in zip(group, rows):
                gens = decode_completions(tok, member_rows, self.stops)
                results.append((self.fitness.score(gens.texts, indices, member), gens.total_tokens))
        return results
