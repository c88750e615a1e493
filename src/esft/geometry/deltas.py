"""ES vs GRPO update geometry at matched checkpoints: both norms, their ratio and the cosine of the deltas.

Table 3 of the paper: ES moves the weights 87-107x farther than GRPO, in a nearly orthogonal direction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import torch

from esft.errors import EsftError
from esft.io import open_weights
from esft.labels import split_seed


def split_label(label: str) -> tuple[str, int, str]:
    """(schedule, stage, task) of a method-free run label `[seed-S/]schedule/k-task` (its seed:
    `esft.labels.split_seed`)."""
    schedule, run = split_seed(label)[1].split("/")
    stage, task = run.split("-", 1)
    return schedule, int(stage), task


def compare_deltas(theta0: Mapping[str, torch.Tensor], pairs: Mapping[str, tuple[str | Path, str | Path]],
                   methods: tuple[str, str]) -> pd.DataFrame:
    """One row per pair label (`schedule/k-task`): ||Δ_a||, ||Δ_b||, ||Δ_a||/||Δ_b|| and cos(Δ_a, Δ_b).

    Streams one tensor at a time in float64, so memory stays at θ₀ plus two tensors.
    """
    a, b = methods
    rows = []
    for label, (path_a, path_b) in pairs.items():
        dot = sq_a = sq_b = 0.0
        with open_weights(path_a) as fa, open_weights(path_b) as fb:
            present = set(fa.keys()) & set(fb.keys())
            for name, theta in theta0.items():
                if name not in present:
                    raise EsftError(f"{label}: parameter {name!r} missing from {path_a} or {path_b}")
                da = fa.get_tensor(name).double() - theta.double()
                db = fb.get_tensor(name).double() - theta.double()
                dot += float((da * db).sum())
                sq_a += float(da.pow(2).sum())
                sq_b += float(db.pow(2).sum())
        norm_a, norm_b = math.sqrt(sq_a), math.sqrt(sq_b)
        schedule, stage, task = split_label(label)
        rows.append({
            "seed": split_seed(label)[0], "schedule": schedule, "stage": stage, "task": task,
            f"norm_{a}": norm_a, f"norm_{b}": norm_b,
            "ratio": norm_a / norm_b if norm_b > 0 else math.nan,
            "cosine": dot / (norm_a * norm_b) if norm_a > 0 and norm_b > 0 else math.nan,
        })
    return pd.DataFrame(rows).astype({"seed": "Int64"})
