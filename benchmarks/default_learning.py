"""Does the default reproduce the paper? Every findings row on every seed, and each run's test gain.

Reads a finished run (default `results/default`) and prints JSON lines:

- one `gain` line per training run and seed: the test accuracy of the task it trained on, before (the
  checkpoint it started from: the base model, or stage k−1 of the same method and seed) and after, and,
  when the run's `run.jsonl` logs `fitness_mean`, its first and last train fitness beside it;
- one `gain_summary` line per method, schedule, stage and task: mean, min and max of the gain over seeds
  (the README's default table);
- one `claim` line per row of `tables/findings.csv` (each judged on every seed by `esft findings`) and
  one that the gains are measured on held-out test prompts (the data manifests count no prompt in both
  splits).

It exits with status 1 when any claim does not hold on every seed (`mixed`, `does not hold` or `not
measured`), so a run of the default can be checked by its exit status:

    python benchmarks/default_learning.py --results results/default

Nothing here knows the numbers of a particular run; the thresholds are the config's `geometry.findings`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from esft.plots.tables import stage_gains


def stage_order(acc: pd.DataFrame, seed: int, method: str) -> list[str]:
    """The tasks a method's sequential stages trained, in order, for one seed."""
    runs = acc[(acc["seed"] == seed) & (acc["method"] == method) & (acc["schedule"] == "sequential")]
    return list(runs.drop_duplicates("stage").sort_values("stage")["trained_task"])


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
    args = ap.parse_args(argv)
    results = Path(args.results)
    acc = pd.read_csv(results / "eval" / "accuracy.csv")
    base = acc[acc["method"] == "base"]
    gains = []
    for seed in sorted(acc.loc[acc["method"] != "base", "seed"].astype(int).unique()):
        # the same before/after as the findings' gain rows (esft.plots.tables.stage_gains), one seed at a time
        for r in stage_gains(pd.concat([base, acc[(acc["method"] != "base") & (acc["seed"] == seed)]])).itertuples():
            run = f"seed-{seed}/{r.method}/{r.schedule}/{r.stage}-{r.task}"
            order = stage_order(acc, seed, r.method)
            start = "base" if r.schedule == "single" or r.stage == 1 else \
                f"seed-{seed}/{r.method}/sequential/{r.stage - 1}-{order[r.stage - 2]}"
            line = {"kind": "gain", "method": r.method, "seed": int(seed), "schedule": r.schedule, "stage": int(r.stage),
                    "task": r.task, "checkpoint": run, "started_from": start, "test_before": r.before,
                    "test_after": r.after, "test_gain": r.gain, **train_fitness(results, run)}
            gains.append(line)
            print(json.dumps(line))
    table = pd.DataFrame(gains)
    for (method, schedule, stage, task), g in table.groupby(["method", "schedule", "stage", "task"], sort=False):
        print(json.dumps({"kind": "gain_summary", "method": method, "schedule": schedule, "stage": int(stage),
                          "task": task, "seeds": len(g),
                          **{f"{col}_{stat}": float(g[col].agg(stat)) for col in ("test_before", "test_after", "test_gain")
                             for stat in ("mean", "min", "max")}}))

    claims = [{"kind": "claim", "claim": r.finding, "holds": r.verdict == "holds", "verdict": r.verdict,
               "seeds": r.seeds, "measured": r.measured, "threshold": r.threshold}
              for r in pd.read_csv(results / "tables" / "findings.csv", keep_default_na=False).itertuples()]
    splits = disjoint_splits(results, sorted(set(table["task"])))
    claims.append({"kind": "claim", "claim": "gains measured on held-out test prompts",
                   "holds": all(splits.values()), "disjoint_train_test": splits})
    for c in claims:
        print(json.dumps(c))
    failed = [c["claim"] for c in claims if not c["holds"]]
    if failed:
        print(json.dumps({"kind": "failed", "claims": failed}))
        sys.exit(1)


if __name__ == "__main__":
    main()
