"""Fitness shaping: turn raw member fitness into update weights."""

from __future__ import annotations

import math
from collections.abc import Sequence

from esft.errors import EsftError

def shape_fitness(fitness: Sequence[float], method: str) -> list[float]:
    """`zscore` (population std, denominator N, so Σzᵢ² = N), centred `rank` in [-1, 1], or `raw`.

    A population with equal fitness carries no signal: z-scores are then all zero.
    """
    values = [float(f) for f in fitness]
    n = len(values)
    if method == "raw":
        return values
    if method == "zscore":
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
        if std <= 1e-12 * max(1.0, abs(mean)):
            return [0.0] * n
        return [(v - mean) / std for v in values]
    if method == "rank":
        order = sorted(range(n), key=values.__getitem__)
        ranks = [0.0] * n
        i = 0
        while i < n:  # ties share their average rank
            j = i
            while j + 1 < n and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                ranks[order[k]] = (i + j) / 2
            i = j + 1
        return [2 * r / (n - 1) - 1 for r in ranks]
    raise EsftError(f"unknown fitness shaping {method!r}; allowed: zscore, rank, raw")
