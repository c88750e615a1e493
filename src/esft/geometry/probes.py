"""Accuracy along normalised directions from θ₀ (Figure 4): θ₀ + s·‖Δ_m‖·d/‖d‖.

For each method m of a checkpoint pair, the scale s is in units of m's own update norm ‖Δ_m‖, so s = 1
on m's direction is m's checkpoint, and seeded random directions are probed at the same distances.
If the trained direction keeps (or gains) accuracy where random directions lose it, the update found
a special direction; if both degrade alike, the displacement is random-walk-like.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch

from esft.es.noise import tensor_noise
from esft.geometry.variants import Variant, norm


class RandomDirection(Mapping[str, torch.Tensor]):
    """A standard-normal direction shaped like θ₀, drawn per tensor on demand from (seed, index, name):
    no copy of the model is held, and any tensor is the same whenever it is drawn."""

    def __init__(self, theta0: Mapping[str, torch.Tensor], seed: int, index: int) -> None:
        self.theta0, self.seed, self.index = theta0, seed, index

    def __getitem__(self, name: str) -> torch.Tensor:
        return tensor_noise(self.theta0[name], self.seed, 0, self.index, f"probe|{name}")

    def __iter__(self) -> Iterator[str]:
        return iter(self.theta0)

    def __len__(self) -> int:
        return len(self.theta0)


def random_directions(theta0: Mapping[str, torch.Tensor], count: int, seed: int) -> dict[str, RandomDirection]:
    return {f"random{i + 1}": RandomDirection(theta0, seed, i) for i in range(count)}


def probe_variants(directions: Mapping[str, Mapping[str, torch.Tensor]], references: Sequence[str],
                   randoms: Sequence[str], scales: Sequence[float]) -> list[Variant]:
    """For each reference method m: its own direction and every random one at distances s·‖Δ_m‖."""
    norms = {d: norm(directions[d]) for d in [*references, *randoms]}
    variants = []
    for ref in references:
        for d in [ref, *randoms]:
            for s in scales:
                distance = s * norms[ref]
                coef = distance / norms[d] if norms[d] > 0 else 0.0
                variants.append(Variant({"reference": ref, "direction": d, "scale": s, "distance": distance},
                                        {d: coef}))
    return variants
