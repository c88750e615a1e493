"""Holdout benchmarks along the probe directions (Figure 5): does moving θ₀ along a method's update change
MMLU/IFEval more, or less, than moving as far along a random direction?

Each probe variant θ₀ + s·‖Δ_m‖·d/‖d‖ (`esft.geometry.probes`) is loaded into the model in memory and
scored through the holdout stage's own lm-eval path (`esft.evaluate.holdout.run_holdout`), so a probe at
s = 1 along m's direction scores what the holdout stage scores for m's checkpoint. Changes are measured
from θ₀ (s = 0), which every table of this stage holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from esft.evaluate.holdout import HEADLINE, run_holdout
from esft.geometry.variants import Variant, Weights, map_variants

KEYS = ["schedule", "stage", "trained_task"]


def holdout_rows(model: torch.nn.Module, tokenizer, theta0: Mapping[str, torch.Tensor],
                 directions: Mapping[str, Weights], variants: Sequence[Variant],
                 benchmarks: Mapping[str, dict[str, Any]], *, data: Mapping[str, Path], tasks_dir: Path | None,
                 batch_size: int) -> list[dict[str, Any]]:
    """One row per variant, benchmark and metric (stderr left out): the variant's key, benchmark, metric,
    value and n. `data`: each synthetic benchmark's rows; the model is left at θ₀."""

    def run(_: Variant) -> dict[str, dict[str, Any]]:
        return {b: run_holdout(model, tokenizer, b, cfg, data=data.get(b), tasks_dir=tasks_dir,
                               batch_size=batch_size)[0] for b, cfg in benchmarks.items()}

    records = map_variants(model, theta0, directions, variants, run)
    return [{**v.key, "benchmark": b, "metric": metric, "value": value, "n": record["n"]}
            for v, by_benchmark in zip(variants, records) for b, record in by_benchmark.items()
            for metric, value in record["metrics"].items() if not metric.endswith("_stderr")]


def headline_changes(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of each benchmark's headline metric (the paper's number), with `change`: the value minus
    θ₀'s (scale 0) at the same checkpoint pair and benchmark."""
    head = df[df["metric"] == df["benchmark"].map(HEADLINE)]
    theta0 = head[head["scale"] == 0].groupby([*KEYS, "benchmark"])["value"].first().rename("theta0")
    head = head.join(theta0, on=[*KEYS, "benchmark"])
    return head.assign(change=head["value"] - head["theta0"])


def random_range_at(df: pd.DataFrame, reference: str, scale: float = 1.0) -> pd.DataFrame:
    """Per checkpoint pair and benchmark: the headline change from θ₀ at `scale` along `reference`'s own
    direction (`own`), the range of the random directions' changes at the same distance (`random_min`,
    `random_max`) and how far `own` lies outside that range (`outside`, 0 within it)."""
    at = headline_changes(df)
    at = at[(at["reference"] == reference) & (at["scale"] == scale)]
    rows = []
    for (schedule, stage, trained, benchmark), g in at.groupby([*KEYS, "benchmark"]):
        own = g.loc[g["direction"] == reference, "change"]
        rand = g.loc[g["direction"] != reference, "change"]
        if own.empty or rand.empty:
            continue
        lo, hi, value = float(rand.min()), float(rand.max()), float(own.iloc[0])
        rows.append({"schedule": schedule, "stage": stage, "trained_task": trained, "benchmark": benchmark,
                     "metric": HEADLINE[benchmark], "own": value, "random_min": lo, "random_max": hi,
                     "outside": max(lo - value, value - hi, 0.0)})
    return pd.DataFrame(rows, columns=[*KEYS, "benchmark", "metric", "own", "random_min", "random_max", "outside"])
