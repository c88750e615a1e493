"""Checkpoint labels: `base`, or `seed-S/METHOD/SCHEDULE/K-TASK` (one run of one seed of an experiment).

Every stage that collects checkpoints reads the seed from the label, so tables and figures can give each
seed's value and their spread. The `seed-S/` part is optional (a label without it has seed None), so a
stage run by hand on one checkpoint takes a plain METHOD/SCHEDULE/K-TASK.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

SEED_PREFIX = "seed-"


def split_seed(label: str) -> tuple[int | None, str]:
    """(seed, the label without its `seed-S/` part); seed None for labels that carry none."""
    head, sep, rest = label.partition("/")
    if sep and head.startswith(SEED_PREFIX) and head[len(SEED_PREFIX):].isdigit():
        return int(head[len(SEED_PREFIX):]), rest
    return None, label


def checkpoint_fields(label: str) -> dict[str, Any]:
    """Columns of a checkpoint label: seed, method, schedule, stage, trained_task (base: no seed, stage 0,
    schedule and trained task `-`)."""
    if label == "base":
        return {"seed": None, "method": "base", "schedule": "-", "stage": 0, "trained_task": "-"}
    seed, rest = split_seed(label)
    parts = rest.split("/")
    if len(parts) != 3 or "-" not in parts[2] or not parts[2].split("-", 1)[0].isdigit():
        raise ValueError(f"checkpoint label {label!r}: expected base or [seed-S/]METHOD/SCHEDULE/K-TASK")
    method, schedule, run = parts
    k, trained = run.split("-", 1)
    return {"seed": seed, "method": method, "schedule": schedule, "stage": int(k), "trained_task": trained}


def seeded_pivot(df: pd.DataFrame, index: Sequence[str], columns: str, values: str) -> pd.DataFrame:
    """`df.pivot_table` with `seed` in the index, keeping rows without a seed (the base model)."""
    no_seed = -1
    df = df.assign(seed=with_seed_column(df)["seed"].astype("Int64").fillna(no_seed))
    wide = df.pivot_table(index=["seed", *index], columns=columns, values=values).reset_index()
    wide.columns.name = None
    wide["seed"] = wide["seed"].astype("Int64").mask(wide["seed"] == no_seed)
    return wide


def with_seed_column(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with a nullable integer `seed` column (missing where a table predates seeds or has none)."""
    seed = df["seed"] if "seed" in df else pd.Series(pd.NA, index=df.index)
    return df.assign(seed=seed.astype("Int64"))
