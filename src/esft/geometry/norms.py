"""Update norms ||θ − θ₀|| of checkpoints, in total and per parameter group."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from esft.params import GROUPS, param_group
from esft.errors import EsftError
from esft.io import read_weights
from esft.labels import split_seed


def update_norms(theta0: dict, checkpoints: dict[str, str | Path]) -> pd.DataFrame:
    """One row per checkpoint: ||Δ||₂ overall and per group, ||θ₀||₂, and the relative norm."""
    base_sq = sum(float(t.double().pow(2).sum()) for t in theta0.values())
    rows = []
    for label, path in checkpoints.items():
        state = read_weights(path)
        per_group = dict.fromkeys(GROUPS, 0.0)
        for name, theta in state.items():
            if name not in theta0:
                raise EsftError(f"{path}: parameter {name!r} is not in the base model")
            diff = theta.double() - theta0[name].double()
            per_group[param_group(name)] += float(diff.pow(2).sum())
        total = math.sqrt(sum(per_group.values()))
        row = {"checkpoint": label, "seed": split_seed(label)[0], "update_norm": total, "relative_norm": total / math.sqrt(base_sq)}
        row.update({f"update_norm_{g}": math.sqrt(v) for g, v in per_group.items()})
        rows.append(row)
    return pd.DataFrame(rows).astype({"seed": "Int64"})
