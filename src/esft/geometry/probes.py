"""Accuracy along normalised directions from θ₀ (Figure 4): θ₀ + c·d/‖d‖ at distances c.

Two axes. `relative`: for each method m of a checkpoint pair, c = s·‖Δ_m‖ with s in units of m's own
update norm, so s = 1 on m's direction is m's checkpoint. `absolute` (the paper's Figure 4): the scales
are the distances c themselves, one axis shared by every method and the random directions, so an update
that is 87× longer than the other shows where each method's accuracy rises and falls; each method's own
checkpoint c = ‖Δ_m‖ is added so that s = c/‖Δ_m‖ = 1 is measured on both axes. Seeded random
directions are probed at the same distances. If the trained direction keeps (or gains) accuracy where
random directions lose it, the update found a special direction; if both degrade alike, the
displacement is random-walk-like.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import torch

from esft.errors import EsftError
from esft.geometry.variants import Variant, norm
from esft.noise import tensor_noise


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


AXES = ("relative", "absolute")


def probe_points(scales: Sequence[float], ref_norm: float, axis: str = "relative") -> list[tuple[float, float]]:
    """(s, c) of one reference method's probes: s = c/‖Δ_m‖, c the distance from θ₀.

    relative: c = s·‖Δ_m‖ for s in `scales`; absolute: c in `scales` plus ‖Δ_m‖ itself (s exactly 1),
    sorted by distance (s is NaN when ‖Δ_m‖ = 0).
    """
    if axis == "relative":
        return [(float(s), float(s) * ref_norm) for s in scales]
    if axis != "absolute":
        raise EsftError(f"unknown probe axis {axis!r}; allowed: {', '.join(AXES)}")
    points = {float(c): (float(c) / ref_norm if ref_norm > 0 else math.nan) for c in scales}
    points[ref_norm] = 1.0
    return sorted(((s, c) for c, s in points.items()), key=lambda p: p[1])


def probe_variants(directions: Mapping[str, Mapping[str, torch.Tensor]], references: Sequence[str],
                   randoms: Sequence[str], scales: Sequence[float], axis: str = "relative") -> list[Variant]:
    """For each reference method m: its own direction and every random one at the distances of
    `probe_points`. Keys: reference, direction, scale (s), distance (c), axis. On the absolute axis the
    random probes at a shared c have the same weights for every m, so they are evaluated once."""
    norms = {d: norm(directions[d]) for d in [*references, *randoms]}
    variants = []
    for ref in references:
        points = probe_points(scales, norms[ref], axis)
        for d in [ref, *randoms]:
            for s, distance in points:
                coef = distance / norms[d] if norms[d] > 0 else 0.0
                variants.append(Variant({"reference": ref, "direction": d, "scale": s, "distance": distance,
                                         "axis": axis}, {d: coef}))
    return variants
