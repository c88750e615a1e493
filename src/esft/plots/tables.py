"""Tables as CSV and Markdown, written atomically side by side."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from esft.io import atomic_open


def write_table(df: pd.DataFrame, csv_path: str | Path, md_path: str | Path, float_format: str = ".3f") -> None:
    with atomic_open(csv_path) as fh:
        df.to_csv(fh, index=False)
    with atomic_open(md_path) as fh:
        fh.write(df.to_markdown(index=False, floatfmt=float_format) + "\n")


def accuracy_matrix(acc: pd.DataFrame) -> pd.DataFrame:
    """One row per checkpoint (base first, then by method, schedule, stage), one column per task."""
    keys = ["checkpoint", "method", "schedule", "stage", "trained_task"]
    wide = acc.pivot_table(index=keys, columns="eval_task", values="accuracy").reset_index()
    wide.columns.name = None
    wide = wide.assign(_o=wide["checkpoint"].ne("base")).sort_values(["_o", "method", "schedule", "stage"])
    return wide.drop(columns=["_o", "checkpoint"])
