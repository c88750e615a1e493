"""Test accuracy along a single-task run, placed at the run's own cumulative cost.

A run's intermediate models are its weights rebuilt after k iterations (`esft replay --iterations k`,
bitwise) and evaluated like any checkpoint; the base model is the point k = 0 and the final checkpoint
the point k = T (the run's length). Each point's x-coordinates are the sums of run.jsonl's `seconds`
(training wall time, evaluation excluded) and `tokens` (generated tokens) over the first k iterations,
so methods whose iterations cost differently (ES vs LBES) compare at equal time and equal generation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from esft.errors import EsftError
from esft.labels import checkpoint_fields

COLUMNS = ["seed", "method", "task", "iteration", "seconds", "tokens", "rollouts", "accuracy", "point"]


def accuracy_curve(label: str, records: Sequence[Mapping[str, Any]], base_accuracy: float,
                   accuracies: Mapping[int, float]) -> pd.DataFrame:
    """Points (iteration, cumulative seconds, tokens, rollouts, accuracy) of run `label` (method/single/1-task):
    the base at 0, then every k of `accuracies` (k = len(records) is the final checkpoint)."""
    fields = checkpoint_fields(label)
    points = {0: (base_accuracy, "base")}
    for k, accuracy in accuracies.items():
        if not 1 <= k <= len(records):
            raise EsftError(f"{label}: an accuracy at iteration {k}, outside 1..{len(records)} (the run's length)")
        points[k] = (accuracy, "final" if k == len(records) else "replayed")
    rows = []
    for k in sorted(points):
        accuracy, point = points[k]
        done = records[:k]
        rows.append({"seed": fields["seed"], "method": fields["method"], "task": fields["trained_task"], "iteration": k,
                     "seconds": float(sum(r["seconds"] for r in done)), "tokens": int(sum(r["tokens"] for r in done)),
                     "rollouts": int(sum(r["rollouts"] for r in done)), "accuracy": float(accuracy), "point": point})
    return pd.DataFrame(rows, columns=COLUMNS).astype({"seed": "Int64"})
