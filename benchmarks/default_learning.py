"""Does training visibly work in a finished run? Base vs trained test accuracy per method and task.

Reads `eval/accuracy.csv` of a results directory (default `results/default`) and prints JSON lines:

- one `gain` line per training run: the test accuracy of the task it trained on, before (the
  checkpoint it started from: the base model, or stage k−1 of the same method) and after, and, when
  the run's `run.jsonl` logs `fitness_mean`, its first and last train fitness (train prompts) beside it;
- one `claim` line per claim of issue 10, with `holds` true/false and the numbers behind it:
  every method raises the test accuracy of its trained task by at least `--min-gain` on at least
  `--min-tasks` of its sequential tasks (a method with fewer sequential tasks, e.g. LBES on one task:
  on all of them); the single-task runs (conciseness) improve their test score; ES and GRPO end each
  sequential stage within `--max-gap` of each other on at least `--min-tasks` tasks; and the gains are
  measured on held-out test prompts (the evaluation reads only test splits: the claim checks that the
  data manifests count no prompt in both splits).

    python benchmarks/default_learning.py --results results/default

Nothing here knows the numbers of a particular run; the thresholds default to issue 10's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd


def start_label(method: str, schedule: str, stage: int, order: list[str]) -> str:
    """The checkpoint a run started from: the base model, or the previous sequential stage."""
    if schedule == "single" or stage == 1:
        return "base"
    return f"{method}/sequential/{stage - 1}-{order[stage - 2]}"


def train_fitness(results: Path, label: str) -> dict[str, float]:
    path = results / "train" / label / "run.jsonl"
    if not path.exists():
        return {}
    values = [json.loads(line).get("fitness_mean") for line in path.read_text().splitlines() if line.strip()]
    values = [v for v in values if v is not None]
    return {"train_fitness_first": values[0], "train_fitness_last": values[-1]} if values else {}


def disjoint_splits(results: Path, tasks: list[str]) -> dict[str, bool | None]:
    """Per task, whether its train and test prompts are disjoint (None when the data is not there)."""
    out: dict[str, bool | None] = {}
    for task in tasks:
        train, test = results / "data" / task / "train.jsonl", results / "data" / task / "test.jsonl"
        if not (train.exists() and test.exists()):
            out[task] = None
            continue
        rows = {split: [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
                for split, p in (("train", train), ("test", test))}
        key = lambda r: json.dumps({k: v for k, v in r.items() if k != "solution"}, sort_keys=True)  # noqa: E731
        out[task] = not ({key(r) for r in rows["train"]} & {key(r) for r in rows["test"]})
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results/default")
    ap.add_argument("--min-gain", type=float, default=0.10, help="accuracy points (as a fraction)")
    ap.add_argument("--min-tasks", type=int, default=3)
    ap.add_argument("--max-gap", type=float, default=0.10)
    args = ap.parse_args(argv)
    results = Path(args.results)
    acc = pd.read_csv(results / "eval" / "accuracy.csv")
    lookup = {(r.checkpoint, r.eval_task): float(r.accuracy) for r in acc.itertuples()}
    runs = acc[acc["method"] != "base"][["checkpoint", "method", "schedule", "stage", "trained_task"]]
    runs = runs.drop_duplicates().sort_values(["method", "schedule", "stage"])

    gains = []
    for method, group in runs.groupby("method", sort=True):
        order = [t for _, t in sorted(zip(group[group.schedule == "sequential"].stage,
                                          group[group.schedule == "sequential"].trained_task))]
        for r in group.itertuples():
            start = start_label(method, r.schedule, int(r.stage), order)
            before, after = lookup.get((start, r.trained_task)), lookup.get((r.checkpoint, r.trained_task))
            line = {"kind": "gain", "method": method, "schedule": r.schedule, "stage": int(r.stage),
                    "task": r.trained_task, "checkpoint": r.checkpoint, "started_from": start,
                    "test_before": before, "test_after": after,
                    "test_gain": None if before is None or after is None else after - before,
                    **train_fitness(results, r.checkpoint)}
            gains.append(line)
            print(json.dumps(line))

    claims = []
    for method in sorted({g["method"] for g in gains}):
        seq = [g for g in gains if g["method"] == method and g["schedule"] == "sequential"]
        if seq:
            need = min(args.min_tasks, len(seq))
            hits = [g["task"] for g in seq if g["test_gain"] is not None and g["test_gain"] >= args.min_gain]
            claims.append({"kind": "claim", "claim": "sequential_test_gain", "method": method,
                           "holds": len(hits) >= need, "tasks_with_gain": hits, "needed": need,
                           "of": len(seq), "min_gain": args.min_gain})
        for g in gains:
            if g["method"] == method and g["schedule"] == "single":
                claims.append({"kind": "claim", "claim": "single_task_improves", "method": method,
                               "task": g["task"], "holds": g["test_gain"] is not None and g["test_gain"] > 1e-9,
                               "test_before": g["test_before"], "test_after": g["test_after"]})

    es = {g["task"]: g["test_after"] for g in gains if g["method"] == "es" and g["schedule"] == "sequential"}
    grpo = {g["task"]: g["test_after"] for g in gains if g["method"] == "grpo" and g["schedule"] == "sequential"}
    common = sorted(set(es) & set(grpo))
    if common:
        gaps = {t: abs(es[t] - grpo[t]) for t in common}
        close = [t for t in common if gaps[t] <= args.max_gap]
        need = min(args.min_tasks, len(common))
        claims.append({"kind": "claim", "claim": "es_grpo_comparable", "holds": len(close) >= need,
                       "tasks_within_gap": close, "needed": need, "gaps": gaps, "max_gap": args.max_gap})
    else:
        claims.append({"kind": "claim", "claim": "es_grpo_comparable", "holds": None,
                       "why": "needs sequential runs of both es and grpo"})

    splits = disjoint_splits(results, sorted({g["task"] for g in gains}))
    claims.append({"kind": "claim", "claim": "gains_on_held_out_test", "holds": all(splits.values()),
                   "disjoint_train_test": splits,
                   "note": "eval/accuracy.csv holds test-split accuracy only; gain lines above are test gains"})
    for c in claims:
        print(json.dumps(c))


if __name__ == "__main__":
    main()
