"""Linear interpolation θ(λ) = (1−λ)θ_a + λθ_b between two methods' checkpoints (Figure 3).

θ(λ) = θ₀ + (1−λ)Δ_a + λΔ_b, so λ = 0 and 1 are the checkpoints themselves. The barrier of a path is
the largest drop of the mean accuracy below the straight line between its endpoints,
max_λ [(1−λ)·acc(0) + λ·acc(1) − acc(λ)]: 0 for a path at or above the line.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from esft.geometry.variants import Variant


def interpolation_variants(grid: Sequence[float]) -> list[Variant]:
    """θ(λ) for each λ of `grid` as combinations of the directions "a" (Δ_a) and "b" (Δ_b)."""
    return [Variant({"lambda": lam}, {"a": 1.0 - lam, "b": lam}) for lam in grid]


def with_mean(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """`df` plus, per `keys`, a row with task "mean": the unweighted mean accuracy over tasks."""
    mean = df.groupby(list(keys), as_index=False)["accuracy"].mean().assign(task="mean")
    return pd.concat([df, mean], ignore_index=True)


def barrier(path: pd.DataFrame) -> float:
    """The barrier of one path: `path` has columns lambda and accuracy (one row per λ, 0 and 1 included)."""
    path = path.sort_values("lambda")
    lam, acc = path["lambda"].to_numpy(), path["accuracy"].to_numpy()
    at0, at1 = acc[lam == 0.0], acc[lam == 1.0]
    if not len(at0) or not len(at1):
        raise ValueError("the λ grid must contain 0 and 1 to define the barrier")
    return float(max(0.0, ((1 - lam) * at0[0] + lam * at1[0] - acc).max()))


def barriers(df: pd.DataFrame) -> pd.DataFrame:
    """The barrier of the mean-accuracy path at every checkpoint of an interpolation table."""
    keys = ["schedule", "stage", "trained_task"]
    mean = with_mean(df, keys + ["lambda"])
    mean = mean[mean["task"] == "mean"]
    return pd.DataFrame([{**dict(zip(keys, k)), "barrier": barrier(g)} for k, g in mean.groupby(keys)])
