"""Tables as CSV, Markdown and LaTeX (booktabs), written atomically side by side."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from esft.io import atomic_open, read_json


def write_table(df: pd.DataFrame, csv_path: str | Path, md_path: str | Path, float_format: str = ".3f",
                tex_path: str | Path | None = None) -> None:
    with atomic_open(csv_path) as fh:
        df.to_csv(fh, index=False)
    with atomic_open(md_path) as fh:
        # missing cells (a cost never reached, a column a method lacks) print as -- rather than nan or <NA>
        fh.write(df.astype(object).where(df.notna(), None).to_markdown(index=False, floatfmt=float_format,
                                                                         missingval="--") + "\n")
    if tex_path is not None:
        styler = df.style.hide(axis="index").format(na_rep="--").format(
            lambda v: format(v, float_format), subset=_float_columns(df), na_rep="--")
        with atomic_open(tex_path) as fh:
            align = "".join("r" if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
                            else "l" for c in df.columns)
            fh.write(styler.to_latex(hrules=True, column_format=align))


def _float_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if pd.api.types.is_float_dtype(df[c])]


def accuracy_matrix(acc: pd.DataFrame) -> pd.DataFrame:
    """One row per checkpoint (base first, then by method, schedule, stage), one column per task."""
    keys = ["checkpoint", "method", "schedule", "stage", "trained_task"]
    wide = acc.pivot_table(index=keys, columns="eval_task", values="accuracy").reset_index()
    wide.columns.name = None
    wide = wide.assign(_o=wide["checkpoint"].ne("base")).sort_values(["_o", "method", "schedule", "stage"])
    return wide.drop(columns=["_o", "checkpoint"])


def single_task(acc: pd.DataFrame, steps: Mapping[str, int], budgets: Mapping[str, str | Path],
                columns: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Table 1: accuracy on each single-task run's own task: the base model, then every method's
    checkpoint (column `method (T steps)`), plus checkpoints rebuilt at earlier budgets.

    `steps`: run label -> steps it trained; `budgets`: `label@K` -> accuracy.json of the run after K steps;
    `columns`: method -> the method whose columns its cells join (a longer run of the same ES, replayed at
    the other's budgets, fills that method's cells for its task).
    """
    base = acc[acc["checkpoint"] == "base"].set_index("eval_task")["accuracy"]
    single = acc[(acc["schedule"] == "single") & (acc["eval_task"] == acc["trained_task"])]
    cells = [(r["trained_task"], r["method"], steps[r["checkpoint"]], r["accuracy"]) for _, r in single.iterrows()]
    for key, path in budgets.items():
        label, k = key.rsplit("@", 1)
        method, _, run = label.split("/")
        task = run.split("-", 1)[1]
        cells.append((task, method, int(k), read_json(path)[task]["accuracy"]))
    long = pd.DataFrame(cells, columns=["task", "method", "steps", "accuracy"])
    long["method"] = long["method"].replace(dict(columns or {}))
    methods = list(dict.fromkeys(long["method"]))
    long["column"] = long["method"] + " (" + long["steps"].astype(str) + " steps)"
    long["_order"] = long["method"].map(methods.index) * 10**9 + long["steps"]
    order = long.sort_values("_order")["column"].unique()
    wide = long.pivot_table(index="task", columns="column", values="accuracy")[list(order)]
    wide.insert(0, "base", base.reindex(wide.index))
    wide.columns.name = None
    return wide.reset_index()


def norm_ratio(deltas: pd.DataFrame, schedule: str = "sequential") -> pd.DataFrame:
    """Table 3: both update norms, their ratio and the cosine of the deltas at each stage of `schedule`."""
    return deltas[deltas["schedule"] == schedule].drop(columns="schedule").sort_values("stage")


def findings(methods: Sequence[str], cfg: Mapping[str, Any], deltas: pd.DataFrame | None = None,
             barriers: pd.DataFrame | None = None, drift_fits: pd.DataFrame | None = None,
             probes: pd.DataFrame | None = None, holdout_ranges: pd.DataFrame | None = None) -> pd.DataFrame:
    """Whether each qualitative finding of the paper holds on this run, with the number behind the verdict.

    A finding whose measurement is absent (its stage did not run) is `not measured`. `holdout_ranges`:
    a's holdout change at s = 1 against the random directions' range
    (`esft.geometry.probe_holdout.random_range_at`); a's direction is "~ random" on holdouts when every
    change lies within the range, widened by `holdout_random_tolerance` on both sides.
    """
    a, b = methods
    rows = []

    def add(finding: str, measured: str, threshold: str, holds: bool | None) -> None:
        verdict = "not measured" if holds is None else ("holds" if holds else "does not hold")
        rows.append({"finding": finding, "measured": measured, "threshold": threshold, "verdict": verdict})

    if deltas is not None and not deltas.empty:
        ratio, cosine = deltas["ratio"], deltas["cosine"].abs()
        add(f"{a} update norm >> {b} norm (Table 3)", f"ratio min {ratio.min():.3g}, max {ratio.max():.3g}",
            f"min ratio >= {cfg['norm_ratio_min']}", bool(ratio.min() >= cfg["norm_ratio_min"]))
        add(f"{a} and {b} deltas near-orthogonal", f"|cos| max {cosine.max():.3g}",
            f"|cos| <= {cfg['cosine_max']}", bool(cosine.max() <= cfg["cosine_max"]))
    else:
        add(f"{a} update norm >> {b} norm (Table 3)", "", f"min ratio >= {cfg['norm_ratio_min']}", None)
        add(f"{a} and {b} deltas near-orthogonal", "", f"|cos| <= {cfg['cosine_max']}", None)
    if barriers is not None and not barriers.empty:
        worst = barriers["barrier"].max()
        add(f"no barrier on the linear path {a} -> {b} (Figure 3)",
            f"max barrier {worst:.3g} (mean accuracy below the endpoints' line)", f"<= {cfg['barrier_max']}",
            bool(worst <= cfg["barrier_max"]))
    else:
        add(f"no barrier on the linear path {a} -> {b} (Figure 3)", "", f"<= {cfg['barrier_max']}", None)
    fits = None if drift_fits is None else drift_fits[
        drift_fits["run"].str.startswith(f"{a}/") & (drift_fits["theory"] == "yes")]
    tol, r2_min = cfg["drift_slope_tolerance"], cfg["drift_r2_min"]
    if fits is not None and not fits.empty:
        ok = bool((fits["r2"] >= r2_min).all() and ((fits["slope_ratio"] - 1).abs() <= tol).all())
        add(f"{a} drift linear in steps, slope ~ a^2 D/N (Figure 6)",
            f"R^2 min {fits['r2'].min():.3g}; slope/theory {fits['slope_ratio'].min():.3g}-"
            f"{fits['slope_ratio'].max():.3g} over {len(fits)} runs",
            f"R^2 >= {r2_min}, |slope/theory - 1| <= {tol}", ok)
    else:
        add(f"{a} drift linear in steps, slope ~ a^2 D/N (Figure 6)", "", f"R^2 >= {r2_min}", None)
    if probes is not None and not probes.empty:
        at1 = probes[(probes["reference"] == a) & (probes["scale"] == 1.0)]
        own = at1[at1["direction"] == a]["accuracy"].mean()
        rand = at1[at1["direction"] != a]["accuracy"].mean()
        add(f"{a} direction beats random directions on the trained task at its norm (Figure 4)",
            f"accuracy {own:.3g} vs random {rand:.3g}", "difference > 0",
            None if math.isnan(own) or math.isnan(rand) else bool(own > rand))
    tol = cfg["holdout_random_tolerance"]
    threshold = f"{a} change from theta_0 at s = 1 within the random directions' range +- {tol}"
    if holdout_ranges is not None and not holdout_ranges.empty:
        cells = [f"{r.stage}-{r.trained_task} {r.benchmark} {r.metric}: {a} {r.own:+.3f} vs random "
                 f"[{r.random_min:+.3f}, {r.random_max:+.3f}]" for r in holdout_ranges.itertuples()]
        worst = holdout_ranges["outside"].max()
        add(f"{a} direction ~ random on holdouts (Figure 5)", "; ".join(cells) + f"; max outside {worst:.3g}",
            threshold, bool(worst <= tol))
    else:
        add(f"{a} direction ~ random on holdouts (Figure 5)", "", threshold, None)
    return pd.DataFrame(rows)


def time_to_accuracy(curves: pd.DataFrame, fraction: float, targets: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Per task and method: the training cost until the first evaluated point at or above the task's target.

    `curves` holds accuracy_curve points (esft.evaluate.curves). A task's target is `targets[task]` (an
    absolute accuracy), else `fraction` × the best accuracy any compared method reaches at any evaluated
    point on the task (the base model included). Only evaluated points count, so a reported cost is an upper
    bound, exact up to the spacing of the evaluated iterations; a method whose points all fall short is
    `not reached` with empty cost cells, and a task whose best accuracy is 0 has no target (`best is 0`).
    """
    targets = targets or {}
    rows = []
    for task, on_task in curves.groupby("task", sort=False):
        best = float(on_task["accuracy"].max())
        target = float(targets[task]) if task in targets else fraction * best
        for method, points in on_task.groupby("method", sort=False):
            points = points.sort_values("iteration")
            row = {"task": task, "method": method, "target": target, "best": float(points["accuracy"].max()),
                   "iteration": pd.NA, "seconds": float("nan"), "tokens": pd.NA, "status": "not reached"}
            # 1e-12: a fraction of the best accuracy may round just above the very accuracy it came from
            hit = points[points["accuracy"] >= target - 1e-12]
            if target <= 0:
                row["status"] = "best is 0"
            elif not hit.empty:
                first = hit.iloc[0]
                row.update(iteration=int(first["iteration"]), seconds=float(first["seconds"]),
                           tokens=int(first["tokens"]), status="reached")
            rows.append(row)
    df = pd.DataFrame(rows)
    return df.astype({"iteration": "Int64", "tokens": "Int64"})
