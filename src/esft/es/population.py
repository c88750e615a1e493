"""fp32 master weights, in-place member perturbation, exact restore and the ES update.

The model's parameters are only ever *written from* the master copy: a member is θ + σε computed in
fp32 and cast once, and restoring copies θ back. Nothing is subtracted in the model's dtype, so a bf16
model does not accumulate rounding error or drop small updates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from esft.es.noise import tensor_noise


class Population:
    """Owns the master weights θ (fp32) of `params` and writes members into the live parameters."""

    def __init__(self, params: dict[str, torch.nn.Parameter], seed: int) -> None:
        if not params:
            raise ValueError("no trainable parameters to evolve")
        self.params = params
        self.seed = seed
        with torch.no_grad():
            self.master = {n: p.detach().to(torch.float32).clone() for n, p in params.items()}

    def direction(self, iteration: int, member: int, name: str) -> torch.Tensor:
        """εᵢ for one tensor: the member's search direction, regenerated from its key."""
        return tensor_noise(self.master[name], self.seed, iteration, member, name)

    def perturbation(self, iteration: int, member: int, name: str, sigma: float) -> torch.Tensor:
        """The fp32 offset σεᵢ that member `member` adds to tensor `name` (every evaluation mode uses this)."""
        return sigma * self.direction(iteration, member, name)

    @torch.no_grad()
    def perturb(self, iteration: int, member: int, sigma: float) -> None:
        """Write member `member`'s weights θ + σε into the model."""
        for name, theta in self.master.items():
            self.params[name].copy_(theta + self.perturbation(iteration, member, name, sigma))

    @torch.no_grad()
    def restore(self) -> None:
        """Write θ back into the model, bit for bit."""
        for name, theta in self.master.items():
            self.params[name].copy_(theta)

    @torch.no_grad()
    def update(self, iteration: int, weights: Sequence[float], alpha: float) -> None:
        """θ ← θ + α/N Σᵢ wᵢεᵢ, accumulated in fp32 per tensor, then written into the model."""
        n = len(weights)
        for name, theta in self.master.items():
            step = torch.zeros_like(theta)
            for member, w in enumerate(weights):
                if w != 0.0:
                    step.add_(self.direction(iteration, member, name), alpha=float(w))
            theta.add_(step, alpha=alpha / n)
        self.restore()

    def load_master(self, state: dict[str, torch.Tensor]) -> None:
        for name, theta in self.master.items():
            theta.copy_(state[name])
        self.restore()
