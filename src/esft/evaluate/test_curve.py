"""Test reward along a training run, and the run's best iteration: the ES-with-LoRA blog's model selection.

The blog evaluates its model on the test prompts every 10 iterations and reports each method at the
iteration of highest mean test reward (its code keeps the first maximum). No intermediate checkpoint is
stored here: θ_k is rebuilt from the base and run.jsonl by the replay the caller passes in (the ES engine's
`replayed`, bitwise as `esft replay`: evaluation imports no training method), one replay per run visiting
every k in turn, and each θ_k is copied into an evaluation model and evaluated like a checkpoint (greedy,
`evaluate_tasks`). The final iteration T is always a point, so the curve ends on the run's own checkpoint;
the base model's evaluation is iteration 0 of every curve but is never a candidate for the best (the blog
evaluates after training iterations only).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from esft.errors import EsftError
from esft.evaluate.prompts import prompt_rewards

SUMMARY = ["checkpoint", "seed", "method", "trained_task", "task", "iteration", "reward", "sem", "total", "n", "best"]


def curve_points(iterations: int, every: int) -> list[int]:
    """Iterations evaluated along a run of `iterations`: every `every`-th one and the last."""
    if every < 1:
        raise EsftError(f"evaluate.test_curve.every must be >= 1, got {every}")
    return sorted(set(range(every, iterations + 1, every)) | ({iterations} if iterations else set()))


def evaluate_along(base: str | Path, records: list[dict[str, Any]], model, tokenizer, data_dirs: Mapping[str, Path],
                   task_cfgs: Mapping[str, Mapping[str, Any]], batch_size: int, every: int,
                   replayed: Callable[..., Iterator[tuple[int, dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Completion records ({iteration, task, index, completion, score}) of the run's weights at each of
    `curve_points`, evaluated in `model` (an HF model of the base, overwritten) on every task of `data_dirs`.

    replayed(model holding θ_0, records, iterations) yields (k, θ_k) in ascending k (the ES engine's
    `replayed`); it runs on the dtype and device run.jsonl records, where it is bitwise."""
    from esft.evaluate.accuracy import evaluate_tasks
    from esft.models import copy_weights, load_model

    points = curve_points(len(records), every)
    if not points:
        return []
    replay_model, _ = load_model(base, dtype=records[0].get("dtype", "float32"), device=records[0].get("device", "cpu"))
    out = []
    for k, weights in replayed(replay_model, records, points):
        copy_weights(model, weights, f"iteration {k}")
        _, completions = evaluate_tasks(model, tokenizer, dict(data_dirs), dict(task_cfgs), batch_size)
        out += [{"iteration": k, **{key: c[key] for key in ("task", "index", "completion", "score")}}
                for c in completions]
    return out


def curve_rewards(base: str | Path, curves: Mapping[str, str | Path], data_dirs: Mapping[str, str | Path],
                  tasks_cfg: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Per test prompt (esft.evaluate.prompts columns and `iteration`): the base model's completions at
    iteration 0 and each run's (label -> test-curve jsonl) at every point of its curve."""
    frames = [prompt_rewards({"base": base}, data_dirs, tasks_cfg).assign(iteration=0)]
    for label, path in curves.items():
        frames.append(prompt_rewards({label: path}, data_dirs, tasks_cfg, by="iteration"))
    return pd.concat(frames, ignore_index=True)


def summarise(rewards: pd.DataFrame) -> pd.DataFrame:
    """Mean test reward (with its standard error over prompts, total and count) per checkpoint, task and
    iteration; `best` marks each run's best iteration on the task it trained: the highest mean, the earliest
    of equals. The base is never best."""
    keys = ["checkpoint", "seed", "method", "trained_task", "task", "iteration"]
    grouped = rewards.groupby(keys, dropna=False, sort=False)["reward"]
    df = grouped.agg(reward="mean", sem="sem", total="sum", n="count").reset_index()
    df["best"] = False
    runs = df[(df["checkpoint"] != "base") & (df["task"] == df["trained_task"])].sort_values("iteration")
    if not runs.empty:
        df.loc[runs.groupby("checkpoint", sort=False)["reward"].idxmax(), "best"] = True
    return df[SUMMARY]


def at_best(rewards: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """The per-prompt rows of the base and of each run at its best iteration (every task of the run)."""
    best = summary.loc[summary["best"], ["checkpoint", "iteration"]]
    chosen = rewards.merge(best, on=["checkpoint", "iteration"])
    return pd.concat([rewards[rewards["checkpoint"] == "base"], chosen], ignore_index=True)
