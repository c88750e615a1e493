"""Per-prompt test reward of checkpoints, recomputed from their evaluation's completions.

The accuracy evaluation keeps each test completion (`completions.jsonl`) with its [0, 1] score; the
ES-with-LoRA study compares models by the task's training reward on each test prompt instead (the
conciseness reward −|length − target length| in characters), so the reward is recomputed here from the
stored completion text and the test row: no model is run again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from esft.errors import EsftError
from esft.labels import checkpoint_fields
from esft.io import read_jsonl
from esft.tasks import get_task, read_rows

COLUMNS = ["checkpoint", "seed", "method", "schedule", "stage", "trained_task", "task", "index", "prompt", "reward",
           "score"]


def prompt_rewards(completions: Mapping[str, str | Path], data_dirs: Mapping[str, str | Path],
                   tasks_cfg: Mapping[str, Mapping[str, Any]], by: str | None = None) -> pd.DataFrame:
    """One row per checkpoint and test prompt of each task in `data_dirs`: the task's reward and score of
    the checkpoint's greedy completion. `completions`: checkpoint label -> its completions.jsonl.

    by: a record field that splits a file into several evaluations of the checkpoint (a test curve's
    `iteration`), kept as a column; each evaluation must cover every test row of every task."""
    tasks = {name: get_task(name, format_bonus=tasks_cfg.get(name, {}).get("format_bonus")) for name in data_dirs}
    rows = {name: read_rows(tasks[name], Path(d) / "test.jsonl") for name, d in data_dirs.items()}
    out = []
    for label, path in completions.items():
        seen: Counter = Counter()
        for record in read_jsonl(path):
            name = record["task"]
            if name not in tasks:
                continue
            row = rows[name][record["index"]]
            key = record[by] if by else None
            out.append({"checkpoint": label, **checkpoint_fields(label), "task": name, "index": record["index"],
                        "prompt": tasks[name].user_prompt(row),
                        "reward": tasks[name].reward(record["completion"], row), "score": record["score"],
                        **({by: key} if by else {})})
            seen[key, name] += 1
        for key in {k for k, _ in seen} if by else {None}:
            for name in tasks:
                if seen[key, name] != len(rows[name]):
                    where = f" at {by} {key}" if by else ""
                    raise EsftError(f"{path}: {seen[key, name]} completions of {name}{where}, but its test split "
                                    f"has {len(rows[name])} rows")
    return pd.DataFrame(out, columns=COLUMNS + ([by] if by else [])).astype({"seed": "Int64"})
