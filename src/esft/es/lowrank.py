"""`lowrank` mode (EGGROLL): rank-r member directions AᵢBᵢᵀ/√r per weight matrix, antithetic pairs.

`LowRankPopulation` redefines a member's direction, so the inherited perturb/restore/update stay
consistent with it: evaluating a low-rank population `inplace` is the reference, and `LowRankWeights`
computes the same member forward in the population loop: x·θᵀ + (x·Bᵢ)(σAᵢ)ᵀ with shared θ when a member
has few rows (decoding), and one bmm with this call's θ + σAᵢBᵢᵀ when it has more rows than inputs
(prefill), where the extra pass over a large output would cost more than building the weights.
Factors are keyed per tensor like `esft.es.noise`; members 2k and 2k+1 share factors with opposite
signs. 1-D tensors (norm gains) keep full-rank noise, also antithetic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from esft.es.batched import StackedWeights
from esft.es.noise import noise_key, tensor_noise
from esft.es.population import Population


class LowRankPopulation(Population):
    """A Population whose matrix directions are AᵢBᵢᵀ/√r (sign-flipped for odd members)."""

    def __init__(self, params: dict[str, torch.nn.Parameter], seed: int, rank: int,
                 alpha_scale: Mapping[str, float] | None = None) -> None:
        if rank < 1:
            raise ValueError(f"lowrank rank must be >= 1, got {rank}")
        super().__init__(params, seed, alpha_scale=alpha_scale)
        self.rank = rank
        self._last: dict[str, tuple[int, int, torch.Tensor]] = {}
        """Per tensor, the last pair's noise: members 2k and 2k+1 are visited one after the other."""

    def _pair_noise(self, iteration: int, pair: int, name: str) -> torch.Tensor:
        """A pair's noise for one tensor: [out + in, r] factor rows for a matrix, else shaped like it."""
        hit = self._last.get(name)
        if hit is not None and hit[:2] == (iteration, pair):
            return hit[2]
        theta = self.master[name]
        if theta.dim() == 2:
            gen = torch.Generator(device=theta.device)
            gen.manual_seed(noise_key(self.seed, iteration, pair, name))
            noise = torch.randn((sum(theta.shape), self.rank), generator=gen, dtype=torch.float32,
                                device=theta.device)
        else:
            noise = tensor_noise(theta, self.seed, iteration, pair, name)
        self._last[name] = (iteration, pair, noise)
        return noise

    def factors(self, iteration: int, member: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(±A/√r [out, r], B [in, r]) of a matrix, both from one generator keyed by the member's pair."""
        ab = self._pair_noise(iteration, member // 2, name)
        out_dim = self.master[name].shape[0]
        sign = -1.0 if member % 2 else 1.0
        return ab[:out_dim] * (sign / math.sqrt(self.rank)), ab[out_dim:]

    def direction(self, iteration: int, member: int, name: str) -> torch.Tensor:
        if self.master[name].dim() == 2:
            a, b = self.factors(iteration, member, name)
            return a @ b.T
        noise = self._pair_noise(iteration, member // 2, name)
        return -noise if member % 2 else noise.clone()

    def weighted_directions(self, iteration: int, coefs: Mapping[int, float], name: str) -> torch.Tensor:
        """Σ cₘ·AₘBₘᵀ of a matrix as one product [out, M·r] @ [M·r, in], as EGGROLL updates."""
        if self.master[name].dim() != 2 or not coefs:
            return super().weighted_directions(iteration, coefs, name)
        factors = [(c, *self.factors(iteration, m, name)) for m, c in coefs.items()]
        a = torch.cat([c * a for c, a, _ in factors], dim=1)
        b = torch.cat([b for _, _, b in factors], dim=1)
        return a @ b.T

    def perturbation_factors(self, iteration: int, member: int, name: str,
                             sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(σ·±A/√r, B): the factors whose product is `perturbation` of a matrix."""
        a, b = self.factors(iteration, member, name)
        return sigma * a, b

    def perturbation(self, iteration: int, member: int, name: str, sigma: float) -> torch.Tensor:
        if self.master[name].dim() == 2:
            a, b = self.perturbation_factors(iteration, member, name, sigma)
            return a @ b.T
        return super().perturbation(iteration, member, name, sigma)


class LowRankWeights(StackedWeights):
    """Shared matrices plus per-member low-rank offsets; norm gains stacked full-rank."""

    def __init__(self, model: torch.nn.Module, population: LowRankPopulation, iteration: int,
                 members: Sequence[int], sigma: float) -> None:
        if not isinstance(population, LowRankPopulation):
            raise TypeError("lowrank weights need a LowRankPopulation")
        matrices = [n for n, t in population.master.items() if t.dim() == 2]
        super().__init__(model, population, iteration, members, sigma,
                         names=[n for n in population.master if n not in matrices])
        self.factors = {}
        for name in matrices:
            pairs = [population.perturbation_factors(iteration, m, name, sigma) for m in members]
            dtype = self.weights[name].dtype
            self.factors[name] = (torch.stack([a for a, _ in pairs]).to(dtype),  # σA [N, out, r]
                                  torch.stack([b for _, b in pairs]).to(dtype))  # B [N, in, r]
        self.fused_factors: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def _fused(self, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B [N, in, k·r], block-diagonal σAᵀ [N, k·r, Σ out]) of k projections of the same input."""
        if names not in self.fused_factors:
            a_parts = [self.factors[n][0] for n in names]
            n, _, r = a_parts[0].shape
            a_t = a_parts[0].new_zeros(n, r * len(names), sum(a.shape[1] for a in a_parts))
            col = 0
            for i, a in enumerate(a_parts):
                a_t[:, i * r:(i + 1) * r, col:col + a.shape[1]] = a.transpose(1, 2)
                col += a.shape[1]
            b = torch.cat([self.factors[n][1] for n in names], dim=2)
            self.fused_factors[names] = (b, a_t)
        return self.fused_factors[names]

    def linear(self, x: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
        low = [n in self.factors for n in names]
        if not any(low):
            return super().linear(x, names)
        if not all(low):
            return torch.cat([self.linear(x, (n,)) for n in names], dim=-1)
        b, a_t = self._fused(names)
        if x.shape[1] > x.shape[2]:
            # more rows per member than inputs (prefill): adding (x·B)(σA)ᵀ would be a second pass over a
            # large output, so build this call's member weights θᵀ + B(σA)ᵀ [N, in, out] and do one bmm
            return torch.bmm(x, torch.baddbmm(self.linear_weight(names).T, b, a_t))
        return super().linear(x, names).baddbmm_(torch.bmm(x, b), a_t)

    def embed(self, ids: torch.Tensor, name: str) -> torch.Tensor:
        f = self.factors.get(name)
        if f is None:
            return super().embed(ids, name)
        a, b = f
        n, vocab, r = a.shape
        rows = F.embedding(ids + torch.arange(n, device=ids.device)[:, None] * vocab, a.view(n * vocab, r))
        return F.embedding(ids, self.weights[name]).baddbmm_(rows, b.transpose(1, 2))
