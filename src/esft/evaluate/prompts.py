"""Per-prompt test reward of checkpoints, recomputed from their evaluation's completions.

The accuracy evaluation keeps each test completion (`completions.jsonl`) with its [0, 1] score; the
ES-with-LoRA study compares models by the task's training reward on each test prompt instead (the
conciseness reward −|length − target length| in characters), so the reward is recomputed here from the
stored completion text and the test row: no model is run again.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from esft.errors import EsftError
from esft.labels import checkpoint_fields
from esft.io import read_jsonl
from esft.tasks import get_task, read_rows

COLUMNS = ["checkpoint", "method", "schedule", "stage", "trained_task", "task", "index", "prompt", "reward",
           "score"]


def prompt_rewards(completions: Mapping[str, str | Path], data_dirs: Mapping[str, str | Path],
                   tasks_cfg: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per checkpoint and test prompt of each task in `data_dirs`: the task's reward and score of
    the checkpoint's greedy completion. `completions`: checkpoint label -> its completions.jsonl."""
    tasks = {name: get_task(name, format_bonus=tasks_cfg.get(name, {}).get("format_bonus")) for name in data_dirs}
    rows = {name: read_rows(tasks[name], Path(d) / "test.jsonl") for name, d in data_dirs.items()}
    out = []
    for label, path in completions.items():
        seen = {name: 0 for name in tasks}
        for record in read_jsonl(path):
            name = record["task"]
            if name not in tasks:
                continue
            row = rows[name][record["index"]]
            out.append({"checkpoint": label, **checkpoint_fields(label), "task": name, "index": record["index"],
                        "prompt": tasks[name].user_prompt(row),
                        "reward": tasks[name].reward(record["completion"], row), "score": record["score"]})
            seen[name] += 1
        for name, n in seen.items():
            if n != len(rows[name]):
                raise EsftError(f"{path}: {n} completions of {name}, but its test split has {len(rows[name])} rows")
    return pd.DataFrame(out, columns=COLUMNS)
