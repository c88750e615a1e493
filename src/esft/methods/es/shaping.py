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


def member_weights(fitness: Sequence[float], method: str, antithetic: str) -> list[float]:
    """Per-member update weights wᵢ (each multiplies the member's signed direction ±ε).

    none / mirrored: the N fitness values are shaped together (mirrored: a pair then contributes
    (w⁺ − w⁻)·ε). signed (EA4LLM eq. 10): the signed rewards sⱼ·Fⱼ (s = +1 for member 2k, −1 for 2k+1)
    are shaped together and member j's weight is sⱼ·shape(s·F)ⱼ, so a pair contributes
    (shape(s·F)⁺ + shape(s·F)⁻)·ε. paired (minibatch ES): the P = N/2 differences dₖ = F⁺ₖ − F⁻ₖ are
    shaped and split as (+d̃ₖ/2, −d̃ₖ/2), so a pair contributes d̃ₖ·ε and raw shaping keeps
    Σ (F⁺ₖ − F⁻ₖ) εₖ exactly. With raw shaping all three antithetic forms give the same step.
    """
    if antithetic == "signed":
        signs = [1.0 - 2.0 * (j % 2) for j in range(len(fitness))]
        shaped = shape_fitness([s * float(f) for s, f in zip(signs, fitness)], method)
        return [s * w for s, w in zip(signs, shaped)]
    if antithetic != "paired":
        return shape_fitness(fitness, method)
    diffs = [float(fitness[2 * k]) - float(fitness[2 * k + 1]) for k in range(len(fitness) // 2)]
    weights = []
    for d in shape_fitness(diffs, method):
        weights += [d / 2, -d / 2]
    return weights
