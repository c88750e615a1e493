"""fp32 master weights, in-place member perturbation, exact restore and the ES update.

The model's parameters are only ever *written from* the master copy: a member is θ + σε computed in
fp32 and cast once, and restoring copies θ back. Nothing is subtracted in the model's dtype, so a bf16
model does not accumulate rounding error or drop small updates.

The master may live in host memory (`master_device="cpu"`, pinned when the model is on CUDA) to leave
room on the GPU: noise is then still drawn, and every sum formed, on the model's device, and only θ
travels (host to device per tensor for a member, the finished step device to host for the update).
fp32 additions are exact IEEE operations on either device, so the run is bitwise the one with the master
on the GPU.

`perturbation()` is the single source of member offsets (antithetic sign and per-group σ_g included):
every evaluation mode, the update and replay go through `direction()`/`perturbation()`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch

from esft.noise import tensor_noise
from esft.runs import offload


class Population:
    """Owns the master weights θ (fp32) of `params` and writes members into the live parameters.

    antithetic: member 2k+s uses direction (−1)^s·ε_k, so a pair shares one noise draw.
    sigma_scale / alpha_scale: per-tensor multipliers σ_g, α_g (missing names use 1).
    phases: tensor-name sets evolved in turn (iteration t evolves phases[t mod len]); None: all, always.
    master_device: "model" (the parameters' device) or "cpu" (host memory; see the module docstring).
    """

    def __init__(self, params: dict[str, torch.nn.Parameter], seed: int, *, antithetic: bool = False,
                 sigma_scale: Mapping[str, float] | None = None, alpha_scale: Mapping[str, float] | None = None,
                 phases: Sequence[frozenset[str]] | None = None, master_device: str = "model") -> None:
        if not params:
            raise ValueError("no trainable parameters to evolve")
        self.params = params
        self.seed = seed
        self.antithetic = antithetic
        self.sigma_scale = dict(sigma_scale or {})
        self.alpha_scale = dict(alpha_scale or {})
        self.phases = [frozenset(p) for p in phases] if phases else None
        if self.phases and (set().union(*self.phases) - set(params) or not all(self.phases)):
            raise ValueError("every phase must be a non-empty set of evolved tensor names")
        with torch.no_grad():
            self.master = {n: offload(p.detach().to(torch.float32), master_device) for n, p in params.items()}

    def active(self, iteration: int) -> list[str]:
        """Names of the tensors evolved (perturbed and updated) at `iteration`, in master order."""
        if self.phases is None:
            return list(self.master)
        phase = self.phases[iteration % len(self.phases)]
        return [n for n in self.master if n in phase]

    def direction(self, iteration: int, member: int, name: str) -> torch.Tensor:
        """The member's unit-scale search direction for one tensor (±εᵢ), regenerated from its key."""
        if not self.antithetic:
            return tensor_noise(self.params[name], self.seed, iteration, member, name)
        eps = tensor_noise(self.params[name], self.seed, iteration, member // 2, name)
        return eps.neg_() if member % 2 else eps

    def perturbation(self, iteration: int, member: int, name: str, sigma: float) -> torch.Tensor:
        """The exact fp32 offset σ·σ_g·(±ε) member `member` adds to tensor `name` at `iteration`.

        Zero for a tensor that is not evolved at this iteration (see `active`).
        """
        if self.phases is not None and name not in self.phases[iteration % len(self.phases)]:
            return torch.zeros(self.params[name].shape, device=self.params[name].device)
        return (sigma * self.sigma_scale.get(name, 1.0)) * self.direction(iteration, member, name)

    def perturbations(self, iteration: int, members: Sequence[int], name: str, sigma: float) -> torch.Tensor:
        """`perturbation` of several members of one tensor, stacked [M, *shape], bit for bit the same.

        The population modes build every member's weights at once; an antithetic pair's draw is
        generated once (negating and scaling commute exactly).
        """
        if self.phases is not None and name not in self.phases[iteration % len(self.phases)]:
            return self.master[name].new_zeros((len(members), *self.master[name].shape))
        draws: dict[int, torch.Tensor] = {}
        rows = []
        for member in members:
            key = member // 2 if self.antithetic else member
            if key not in draws:
                draws[key] = tensor_noise(self.master[name], self.seed, iteration, key, name)
            rows.append(draws[key].neg() if self.antithetic and member % 2 else draws[key])
        return torch.stack(rows).mul_(sigma * self.sigma_scale.get(name, 1.0))

    @torch.no_grad()
    def perturb(self, iteration: int, member: int, sigma: float) -> None:
        """Write member `member`'s weights θ + offset into the model (only the active tensors change)."""
        for name in self.active(iteration):
            theta = self.master[name].to(self.params[name].device, non_blocking=True)
            self.params[name].copy_(torch.add(theta, self.perturbation(iteration, member, name, sigma)))

    @torch.no_grad()
    def restore(self) -> None:
        """Write θ back into the model, bit for bit."""
        for name, theta in self.master.items():
            self.params[name].copy_(theta)

    @torch.no_grad()
    def steps(self, iteration: int, weights: Sequence[float], alpha: float, sigma: float | None = None,
              normalize: bool = False, group_sigma: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, update) per active tensor, one at a time: α·α_g/N Σᵢ wᵢ dᵢ, dᵢ the member's direction.

        sigma: the NES step, additionally divided by σ·σ_g (the member's actual noise scale), or by σ
        alone with `group_sigma` false (EA4LLM eq. 14).
        normalize: rescale each tensor's step to RMS α·α_g per entry before the NES division.
        Antithetic pairs are summed as (w₂ₖ − w₂ₖ₊₁)·ε_k, so each noise draw is generated once.
        """
        n = len(weights)
        if self.antithetic:  # a pair's directions are ±ε_k: one draw, weighted by the difference
            coefs = {2 * k: float(weights[2 * k]) - float(weights[2 * k + 1]) for k in range(n // 2)}
            if n % 2:  # an unpaired last member (lowrank allows odd populations)
                coefs[n - 1] = float(weights[n - 1])
        else:
            coefs = {i: float(w) for i, w in enumerate(weights)}
        coefs = {member: c for member, c in coefs.items() if c != 0.0}
        for name in self.active(iteration):
            acc = self.weighted_directions(iteration, coefs, name)
            lr = alpha * self.alpha_scale.get(name, 1.0)
            if normalize:
                rms = float(acc.pow(2).mean().sqrt())
                scale = lr / rms if rms > 0 else 0.0
            else:
                scale = lr / n
            if sigma is not None:
                scale /= sigma * (self.sigma_scale.get(name, 1.0) if group_sigma else 1.0)
            yield name, acc.mul_(scale)

    def weighted_directions(self, iteration: int, coefs: Mapping[int, float], name: str) -> torch.Tensor:
        """Σ cₘ·dₘ over members m of one tensor, in fp32 on the model's device (a fresh tensor the caller
        may modify)."""
        acc = torch.zeros(self.params[name].shape, device=self.params[name].device)
        for member, c in coefs.items():
            acc.add_(self.direction(iteration, member, name), alpha=c)
        return acc

    @torch.no_grad()
    def update(self, iteration: int, weights: Sequence[float], alpha: float, sigma: float | None = None,
               normalize: bool = False, group_sigma: bool = True) -> None:
        """θ ← θ + `steps(...)`, accumulated in fp32 per tensor, then written into the model."""
        for name, delta in self.steps(iteration, weights, alpha, sigma, normalize, group_sigma):
            self.master[name].add_(delta.to(self.master[name].device))
        self.restore()

    def load_master(self, state: dict[str, torch.Tensor]) -> None:
        for name, theta in self.master.items():
            theta.copy_(state[name])
        self.restore()
