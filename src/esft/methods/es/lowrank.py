"""`lowrank` mode (EGGROLL): rank-r member directions AᵢBᵢᵀ/√r per weight matrix, antithetic pairs.

`LowRankPopulation` redefines a member's direction, so the inherited perturb/restore/update stay
consistent with it: evaluating a low-rank population `inplace` is the reference, and `LowRankWeights`
computes the same member forward in the population loop as x·θᵀ + (x·Bᵢ)(σAᵢ)ᵀ with θ shared, so a
decoding step costs the unperturbed product plus two thin ones per matrix.
Factors are keyed per tensor like `esft.noise`; members 2k and 2k+1 share factors with opposite
signs. 1-D tensors (norm gains) keep full-rank noise, also antithetic."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from esft.methods.es.batched import StackedWeights
from esft.methods.es.population import Population
from esft.noise import noise_key


class LowRankPopulation(Population):
    """A Population whose matrix directions are AᵢBᵢᵀ/√r (sign-flipped for odd members).

    It is antithetic like `Population(antithetic=True)`: 1-D tensors keep that class's ±ε_k, and the
    update sums each pair once. σ_g multiplies σ for a tensor's factors as for its full-rank noise.
    """

    def __init__(self, params: dict[str, torch.nn.Parameter], seed: int, rank: int,
                 sigma_scale: Mapping[str, float] | None = None,
                 alpha_scale: Mapping[str, float] | None = None) -> None:
        if rank < 1:
            raise ValueError(f"lowrank rank must be >= 1, got {rank}")
        super().__init__(params, seed, antithetic=True, sigma_scale=sigma_scale, alpha_scale=alpha_scale)
        self.rank = rank
        self._last: dict[str, tuple[int, int, torch.Tensor]] = {}
        """Per matrix, the last pair's factors: members 2k and 2k+1 are visited one after the other."""

    def _pair_factors(self, iteration: int, pair: int, name: str) -> torch.Tensor:
        """A pair's [out + in, r] factor rows (A over B) for one matrix, from one keyed generator."""
        hit = self._last.get(name)
        if hit is not None and hit[:2] == (iteration, pair):
            return hit[2]
        theta = self.master[name]
        gen = torch.Generator(device=theta.device)
        gen.manual_seed(noise_key(self.seed, iteration, pair, name))
        noise = torch.randn((sum(theta.shape), self.rank), generator=gen, dtype=torch.float32, device=theta.device)
        self._last[name] = (iteration, pair, noise)
        return noise

    def factors(self, iteration: int, member: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(±A/√r [out, r], B [in, r]) of a matrix; members 2k and 2k+1 share them with opposite signs."""
        a, b = self._signed_factors(iteration, [member], name, [1.0])
        return a[0], b[0]

    def direction(self, iteration: int, member: int, name: str) -> torch.Tensor:
        if self.master[name].dim() != 2:
            return super().direction(iteration, member, name)
        a, b = self.factors(iteration, member, name)
        return a @ b.T

    def _signed_factors(self, iteration: int, members: Sequence[int], name: str,
                        scales: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """(cₘ·±A/√r [M, out, r], B [M, in, r]) of a matrix for `members` with per-member scales cₘ."""
        out_dim = self.master[name].shape[0]
        ab = torch.stack([self._pair_factors(iteration, m // 2, name) for m in members])
        c = torch.tensor([(-s if m % 2 else s) / math.sqrt(self.rank) for m, s in zip(members, scales)],
                         device=ab.device)
        return ab[:, :out_dim] * c[:, None, None], ab[:, out_dim:]

    def weighted_directions(self, iteration: int, coefs: Mapping[int, float], name: str) -> torch.Tensor:
        """Σ cₘ·AₘBₘᵀ of a matrix as one product [out, M·r] @ [M·r, in], as EGGROLL updates."""
        if self.master[name].dim() != 2 or not coefs:
            return super().weighted_directions(iteration, coefs, name)
        a, b = self._signed_factors(iteration, list(coefs), name, list(coefs.values()))
        return a.transpose(0, 1).flatten(1) @ b.transpose(0, 1).flatten(1).T

    def member_factors(self, iteration: int, members: Sequence[int], name: str,
                       sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(σ·σ_g·±A/√r [M, out, r], B [M, in, r]) of a matrix for `members`: the factors whose
        products are their `perturbation`s, built with one scaling for the whole population."""
        scale = sigma * self.sigma_scale.get(name, 1.0)
        return self._signed_factors(iteration, members, name, [scale] * len(members))

    def perturbation(self, iteration: int, member: int, name: str, sigma: float) -> torch.Tensor:
        if self.master[name].dim() != 2:
            return super().perturbation(iteration, member, name, sigma)
        a, b = self.factors(iteration, member, name)
        return (sigma * self.sigma_scale.get(name, 1.0)) * (a @ b.T)

    def perturbations(self, iteration: int, members: Sequence[int], name: str, sigma: float) -> torch.Tensor:
        if self.master[name].dim() != 2:
            return super().perturbations(iteration, members, name, sigma)
        return torch.stack([self.perturbation(iteration, m, name, sigma) for m in members])


def _add_outer_(y: torch.Tensor, c: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """y += c @ a_t in place, batched over members; an inner dimension of 1 (rank 1, one projection) as
    a broadcast product, several times faster than a CPU bmm."""
    return y.addcmul_(c, a_t) if c.shape[-1] == 1 else y.baddbmm_(c, a_t)


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
        """Per matrix (σA [N, out, r], B [N, in, r]) in the model's dtype."""
        for name in matrices:
            a, b = population.member_factors(iteration, members, name, sigma)
            self.factors[name] = (a.to(self.weights[name].dtype), b.to(self.weights[name].dtype))
        self.plans: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = {}
        self.row_offsets = torch.arange(len(members), device=next(iter(self.weights.values())).device)[:, None]

    def _plan(self, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(θ [Σ out, in], B [N, in, k·r], block-diagonal σAᵀ [N, k·r, Σ out]) of k projections of the
        same input, built on first use; None unless every one of them has factors."""
        if names not in self.plans:
            if not all(n in self.factors for n in names):
                self.plans[names] = None
                return None
            a_parts = [self.factors[n][0] for n in names]
            n, _, r = a_parts[0].shape
            a_t = a_parts[0].new_zeros(n, r * len(names), sum(a.shape[1] for a in a_parts))
            col = 0
            for i, a in enumerate(a_parts):
                a_t[:, i * r:(i + 1) * r, col:col + a.shape[1]] = a.transpose(1, 2)
                col += a.shape[1]
            b = torch.cat([self.factors[n][1] for n in names], dim=2)
            self.plans[names] = (self.linear_weight(names), b, a_t)
        return self.plans[names]

    def linear(self, x: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
        plan = self._plan(names)
        if plan is None:
            if not any(n in self.factors for n in names):
                return super().linear(x, names)
            return torch.cat([self.linear(x, (n,)) for n in names], dim=-1)
        theta, b, a_t = plan
        return _add_outer_(F.linear(x, theta), torch.bmm(x, b), a_t)

    def embed(self, ids: torch.Tensor, name: str) -> torch.Tensor:
        f = self.factors.get(name)
        if f is None:
            return super().embed(ids, name)
        a, b = f
        n, vocab, r = a.shape
        rows = F.embedding(ids + self.row_offsets * vocab, a.view(n * vocab, r))
        return _add_outer_(F.embedding(ids, self.weights[name]), rows, b.transpose(1, 2))
