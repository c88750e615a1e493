"""Tables as CSV, Markdown and LaTeX (booktabs), written atomically side by side."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from esft.io import atomic_open, read_json, write_csv
from esft.labels import checkpoint_fields, seeded_pivot, with_seed_column


def write_table(df: pd.DataFrame, csv_path: str | Path, md_path: str | Path, float_format: str = ".3f",
                tex_path: str | Path | None = None, display: pd.DataFrame | None = None) -> None:
    """`df` as CSV; `display` (default `df`) as Markdown and LaTeX."""
    write_csv(csv_path, df)
    df = df if display is None else display
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


SUMMARIES = ("mean", "min", "max")


def over_seeds(df: pd.DataFrame, keys: Sequence[str], float_format: str = ".3f") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(csv, display) of a table with one row per seed of each key (column `seed`, missing for rows that no
    seed trains, such as the base model).

    The csv keeps every seed's row and, for keys with several seeds, adds their `mean`, `min` and `max` in the
    seed column; the display has one row per key with `mean [min, max]` numeric cells (a plain value where a
    key has one seed) and `seeds`, the number of seeds, so a reader sees the spread beside every number."""
    df = with_seed_column(df)
    values = [c for c in df.columns if c not in (*keys, "seed") and pd.api.types.is_numeric_dtype(df[c])
              and not pd.api.types.is_bool_dtype(df[c])]
    seed = df["seed"].astype("Int64").astype(object).where(df["seed"].notna(), "-").astype(str)
    rows = df.assign(seed=seed)
    csv_parts, display_rows = [rows], []
    for key, g in rows.groupby(list(keys), sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(keys, key), seeds=len(g))
        stats = {name: g[values].agg(name, numeric_only=True) for name in SUMMARIES}
        if len(g) > 1:
            csv_parts.append(pd.DataFrame([{**dict(zip(keys, key)), "seed": name, **stats[name].to_dict()}
                                           for name in SUMMARIES]))
        for col in values:
            mean, lo, hi = (stats[name][col] for name in SUMMARIES)
            if pd.isna(mean):
                row[col] = None
            elif len(g) == 1:
                row[col] = format(mean, float_format)
            else:
                row[col] = f"{mean:{float_format}} [{lo:{float_format}}, {hi:{float_format}}]"
        display_rows.append(row)
    csv = pd.concat(csv_parts, ignore_index=True)
    return csv[[*keys, "seed", *values]], pd.DataFrame(display_rows)[[*keys, "seeds", *values]]


CHECKPOINT_KEYS = ["method", "schedule", "stage", "trained_task"]


def by_checkpoint(wide: pd.DataFrame) -> pd.DataFrame:
    """Rows in reading order: the base first, then by method, schedule, stage and seed."""
    wide = with_seed_column(wide).assign(_o=wide["method"].ne("base"))
    wide = wide.sort_values(["_o", "method", "schedule", "stage", "seed"])
    return wide.drop(columns="_o").reset_index(drop=True)


def accuracy_matrix(acc: pd.DataFrame) -> pd.DataFrame:
    """One row per checkpoint and seed (base first, then by method, schedule, stage), one column per task."""
    return by_checkpoint(seeded_pivot(acc, CHECKPOINT_KEYS, "eval_task", "accuracy"))


def single_task(acc: pd.DataFrame, steps: Mapping[str, int], budgets: Mapping[str, str | Path],
                columns: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Table 1: accuracy on each single-task run's own task: the base model, then every method's
    checkpoint (column `method (T steps)`), plus checkpoints rebuilt at earlier budgets.

    `steps`: run label -> steps it trained; `budgets`: `label@K` -> accuracy.json of the run after K steps;
    `columns`: method -> the method whose columns its cells join (a longer run of the same ES, replayed at
    the other's budgets, fills that method's cells for its task). One row per task and seed (column `seed`).
    """
    acc = with_seed_column(acc)
    base = acc[acc["checkpoint"] == "base"].set_index("eval_task")["accuracy"]
    single = acc[(acc["schedule"] == "single") & (acc["eval_task"] == acc["trained_task"])]
    cells = [(r["trained_task"], r["seed"], r["method"], steps[r["checkpoint"]], r["accuracy"])
             for _, r in single.iterrows()]
    for key, path in budgets.items():
        label, k = key.rsplit("@", 1)
        fields = checkpoint_fields(label)
        task = fields["trained_task"]
        cells.append((task, fields["seed"], fields["method"], int(k), read_json(path)[task]["accuracy"]))
    long = pd.DataFrame(cells, columns=["task", "seed", "method", "steps", "accuracy"])
    long["method"] = long["method"].replace(dict(columns or {}))
    methods = list(dict.fromkeys(long["method"]))
    long["column"] = long["method"] + " (" + long["steps"].astype(str) + " steps)"
    long["_order"] = long["method"].map(methods.index) * 10**9 + long["steps"]
    order = long.sort_values("_order")["column"].unique()
    wide = seeded_pivot(long, ["task"], "column", "accuracy")
    wide.insert(2, "base", wide["task"].map(base))
    return wide[["task", "seed", "base", *order]].sort_values(["task", "seed"]).reset_index(drop=True)


def norm_ratio(deltas: pd.DataFrame, schedule: str = "sequential") -> pd.DataFrame:
    """Table 3: both update norms, their ratio and the cosine of the deltas at each stage of `schedule`
    and seed."""
    deltas = with_seed_column(deltas)
    return deltas[deltas["schedule"] == schedule].drop(columns="schedule").sort_values(["stage", "seed"])


def findings(methods: Sequence[str], cfg: Mapping[str, Any], deltas: pd.DataFrame | None = None,
             interpolation: pd.DataFrame | None = None, drift_fits: pd.DataFrame | None = None,
             probes: pd.DataFrame | None = None, probes_holdout: pd.DataFrame | None = None,
             accuracy: pd.DataFrame | None = None, kl: pd.DataFrame | None = None) -> pd.DataFrame:
    """Whether each claim of the paper holds, on every seed, with the numbers behind each verdict.

    Each input (the stages' csv files, each with a `seed` column) is split by seed and judged by
    `seed_findings`; rows without a seed (the base model) go with every seed. A finding `holds` when it
    holds on every seed where it is measured, `does not hold` when on none, and is `mixed` otherwise; its
    `measured` cell gives each seed's numbers and `seeds` how many seeds it held on.
    """
    inputs = {"deltas": deltas, "interpolation": interpolation, "drift_fits": drift_fits, "probes": probes,
              "probes_holdout": probes_holdout, "accuracy": accuracy, "kl": kl}
    present = {name: with_seed_column(df) for name, df in inputs.items() if df is not None and not df.empty}
    seeds = sorted({int(x) for df in present.values() for x in df["seed"].dropna()}) or [None]
    per_seed = {}
    for seed in seeds:
        part = {name: df[df["seed"].isna() | (df["seed"] == seed)] if seed is not None else df
                for name, df in present.items()}
        per_seed[seed] = seed_findings(methods, cfg, **part)
    rows = []
    for i, first in enumerate(per_seed[seeds[0]]):
        judged = [(seed, found[i]) for seed, found in per_seed.items() if found[i]["holds"] is not None]
        held = [found["holds"] for _, found in judged]
        verdict = "not measured" if not held else (
            "holds" if all(held) else "does not hold" if not any(held) else "mixed")
        measured = "; ".join(found["measured"] if seed is None else f"seed {seed}: {found['measured']}"
                             for seed, found in judged)
        rows.append({"finding": first["finding"], "measured": measured, "threshold": first["threshold"],
                     "seeds": f"{sum(held)}/{len(held)}" if held else "", "verdict": verdict})
    return pd.DataFrame(rows)


def seed_findings(methods: Sequence[str], cfg: Mapping[str, Any], deltas: pd.DataFrame | None = None,
                  interpolation: pd.DataFrame | None = None, drift_fits: pd.DataFrame | None = None,
                  probes: pd.DataFrame | None = None, probes_holdout: pd.DataFrame | None = None,
                  accuracy: pd.DataFrame | None = None, kl: pd.DataFrame | None = None) -> list[dict[str, Any]]:
    """The findings of one seed: dicts of finding, measured, threshold and holds (None: not measured).

    Learning (from accuracy.csv): each compared method gains at least `gain_min` on its trained task over the
    checkpoint it started from, on at least `gain_tasks_min` sequential tasks (all of them, where it has fewer);
    the two end each sequential stage within `accuracy_gap_max` of each other on as many; every other
    method (LBES) gains `other_gain_min` on each task it trains. Forgetting (kl.csv): a's mean incremental
    KL(π_{k−1} ‖ π_k) over the tasks not trained at stage k exceeds b's at every sequential stage. Geometry:
    the norm ratio, near-orthogonal deltas, no barrier, a's direction beats random on the trained task and
    stays within the random range on holdouts (`holdout_random_tolerance`); drift: a's is linear with
    Proposition 1's slope, b's is not: its rate over the second half of each run is below
    `drift_rate_ratio_max` times that of the first half (a random walk keeps a constant rate).
    """
    from esft.geometry.interpolation import barriers
    from esft.geometry.probe_holdout import random_range_at

    a, b = methods
    rows: list[dict[str, Any]] = []

    def add(finding: str, measured: str, threshold: str, holds: bool | None) -> None:
        rows.append({"finding": finding, "measured": measured if holds is not None else "",
                     "threshold": threshold, "holds": holds})

    gain_min, tasks_min, gap_max = cfg["gain_min"], cfg["gain_tasks_min"], cfg["accuracy_gap_max"]
    gains = stage_gains(accuracy) if accuracy is not None else pd.DataFrame()
    for m in (a, b):
        g = gains[(gains["method"] == m) & (gains["schedule"] == "sequential")] if not gains.empty else gains
        need = min(tasks_min, len(g))
        add(f"{m} gains >= {gain_min:g} on its trained task (Figure 1)",
            ", ".join(f"{r.task} {r.gain:+.3f}" for r in g.itertuples()),
            f">= {tasks_min} sequential tasks (all, if fewer)", None if g.empty else bool((g["gain"] >= gain_min).sum() >= need))
    if not gains.empty:
        seq = gains[gains["schedule"] == "sequential"].pivot_table(index=["stage", "task"], columns="method",
                                                                  values="after")
        if {a, b} <= set(seq.columns):
            seq = seq.dropna(subset=[a, b])
            gap = (seq[a] - seq[b]).abs()
            add(f"{a} and {b} reach comparable accuracy on each trained task (Table 1, Figure 1)",
                ", ".join(f"{task} {a} {r[a]:.3f} vs {b} {r[b]:.3f}" for (_, task), r in seq.iterrows()),
                f"|gap| <= {gap_max:g} on >= {tasks_min} stages (all, if fewer)",
                bool((gap <= gap_max).sum() >= min(tasks_min, len(gap))))
        other_min = cfg["other_gain_min"]
        for m in sorted(set(gains["method"]) - {a, b}):
            g = gains[gains["method"] == m]
            add(f"{m} gains on its trained task", ", ".join(f"{r.task} {r.gain:+.3f}" for r in g.itertuples()),
                f">= {other_min:g} on every task it trains", bool((g["gain"] >= other_min).all()))
    else:
        add(f"{a} and {b} reach comparable accuracy on each trained task (Table 1, Figure 1)", "",
            f"|gap| <= {gap_max:g}", None)
    off = off_task_kl(kl) if kl is not None else pd.DataFrame()
    off = off[off["method"].isin([a, b])] if not off.empty else off
    wide = off.pivot_table(index="stage", columns="method", values="kl") if not off.empty else off
    measured_kl = not off.empty and {a, b} <= set(wide.columns)
    add(f"{a}'s off-task drift broader than {b}'s (Figure 2)",
        ", ".join(f"stage {k}: {r[a]:.3g} vs {r[b]:.3g}" for k, r in wide.iterrows()) if measured_kl else "",
        "mean KL(pi_k-1 || pi_k) over the tasks not trained at stage k larger at every stage",
        bool((wide[a] > wide[b]).all()) if measured_kl else None)
    if deltas is not None and not deltas.empty:
        ratio, cosine = deltas["ratio"], deltas["cosine"].abs()
        add(f"{a} update norm >> {b} norm (Table 3)", f"ratio min {ratio.min():.3g}, max {ratio.max():.3g}",
            f"min ratio >= {cfg['norm_ratio_min']}", bool(ratio.min() >= cfg["norm_ratio_min"]))
        add(f"{a} and {b} deltas near-orthogonal", f"|cos| max {cosine.max():.3g}",
            f"|cos| <= {cfg['cosine_max']}", bool(cosine.max() <= cfg["cosine_max"]))
    else:
        add(f"{a} update norm >> {b} norm (Table 3)", "", f"min ratio >= {cfg['norm_ratio_min']}", None)
        add(f"{a} and {b} deltas near-orthogonal", "", f"|cos| <= {cfg['cosine_max']}", None)
    path = barriers(interpolation) if interpolation is not None else None
    add(f"no barrier on the linear path {a} -> {b} (Figure 3)",
        f"max barrier {path['barrier'].max():.3g} (mean accuracy below the endpoints' line)" if path is not None else "",
        f"<= {cfg['barrier_max']}", None if path is None else bool(path["barrier"].max() <= cfg["barrier_max"]))
    if probes is not None and not probes.empty:
        at1 = probes[(probes["reference"] == a) & (probes["scale"] == 1.0)]
        own = at1[at1["direction"] == a]["accuracy"].mean()
        rand = at1[at1["direction"] != a]["accuracy"].mean()
        add(f"{a} direction beats random directions on the trained task at its norm (Figure 4)",
            f"accuracy {own:.3g} vs random {rand:.3g}", "difference > 0",
            None if math.isnan(own) or math.isnan(rand) else bool(own > rand))
    tol = cfg["holdout_random_tolerance"]
    threshold = f"{a} change from theta_0 at s = 1 within the random directions' range +- {tol}"
    ranges = random_range_at(probes_holdout, a) if probes_holdout is not None else None
    if ranges is not None and not ranges.empty:
        cells = [f"{r.stage}-{r.trained_task} {r.benchmark} {r.metric}: {a} {r.own:+.3f} vs random "
                 f"[{r.random_min:+.3f}, {r.random_max:+.3f}]" for r in ranges.itertuples()]
        worst = ranges["outside"].max()
        add(f"{a} direction ~ random on holdouts (Figure 5)", "; ".join(cells) + f"; max outside {worst:.3g}",
            threshold, bool(worst <= tol))
    else:
        add(f"{a} direction ~ random on holdouts (Figure 5)", "", threshold, None)
    tol, r2_min = cfg["drift_slope_tolerance"], cfg["drift_r2_min"]
    fits = None if drift_fits is None else drift_fits[
        drift_fits["run"].map(lambda r: checkpoint_fields(r)["method"]) == a]
    fits = None if fits is None else fits[fits["theory"] == "yes"]
    if fits is not None and not fits.empty:
        ok = bool((fits["r2"] >= r2_min).all() and ((fits["slope_ratio"] - 1).abs() <= tol).all())
        add(f"{a} drift linear in steps, slope ~ a^2 D/N (Figure 6)",
            f"R^2 min {fits['r2'].min():.3g}; slope/theory {fits['slope_ratio'].min():.3g}-"
            f"{fits['slope_ratio'].max():.3g} over {len(fits)} runs",
            f"R^2 >= {r2_min}, |slope/theory - 1| <= {tol}", ok)
    else:
        add(f"{a} drift linear in steps, slope ~ a^2 D/N (Figure 6)", "", f"R^2 >= {r2_min}", None)
    other = None if drift_fits is None else drift_fits[
        drift_fits["run"].map(lambda r: checkpoint_fields(r)["method"]) == b]
    rate_max = cfg["drift_rate_ratio_max"]
    add(f"{b} drift not linear in steps: it slows down (Figure 6)",
        f"late/early drift rate {other['rate_ratio'].min():.3g}-{other['rate_ratio'].max():.3g} over {len(other)} runs"
        + (f" ({a}: {fits['rate_ratio'].min():.3g}-{fits['rate_ratio'].max():.3g})" if fits is not None and not fits.empty else "")
        if other is not None and not other.empty else "",
        f"rate over the second half of every run < {rate_max} x the first half's",
        None if other is None or other.empty else bool((other["rate_ratio"] < rate_max).all()))
    return rows


def stage_gains(acc: pd.DataFrame) -> pd.DataFrame:
    """Per training run: accuracy on its trained task before (the checkpoint it started from: the base, or
    stage k−1 of the same method and seed) and after, and the gain."""
    on_task = acc[(acc["method"] != "base") & (acc["eval_task"] == acc["trained_task"])]
    base = acc[acc["method"] == "base"].set_index("eval_task")["accuracy"]
    lookup = {(r.method, r.schedule, int(r.stage), r.eval_task): r.accuracy for r in acc.itertuples()
              if r.method != "base"}
    rows = []
    for r in on_task.sort_values(["method", "schedule", "stage"]).itertuples():
        stage = int(r.stage)
        before = base.get(r.eval_task) if r.schedule == "single" or stage == 1 else lookup.get(
            (r.method, "sequential", stage - 1, r.eval_task))
        rows.append({"method": r.method, "schedule": r.schedule, "stage": stage, "task": r.eval_task,
                     "before": before, "after": r.accuracy, "gain": r.accuracy - before})
    return pd.DataFrame(rows, columns=["method", "schedule", "stage", "task", "before", "after", "gain"])


def off_task_kl(kl: pd.DataFrame) -> pd.DataFrame:
    """Per method and sequential stage k: the mean incremental KL(π_{k−1} ‖ π_k) over the evaluated tasks
    other than the one stage k trains (Figure 2's off-task cells)."""
    inc = kl[(kl["schedule"] == "sequential") & (kl["reference"] == "previous")
             & (kl["eval_task"] != kl["trained_task"])]
    return inc.groupby(["method", "stage"], as_index=False)["kl"].mean()


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
    seed = curves["seed"].astype("Int64").fillna(-1) if "seed" in curves else pd.Series(-1, index=curves.index)
    for (seed_value, task), on_task in curves.groupby([seed, "task"], sort=False):
        best = float(on_task["accuracy"].max())
        target = float(targets[task]) if task in targets else fraction * best
        for method, points in on_task.groupby("method", sort=False):
            points = points.sort_values("iteration")
            row = {"seed": pd.NA if seed_value < 0 else int(seed_value), "task": task, "method": method, "target": target, "best": float(points["accuracy"].max()),
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
    return df.astype({"seed": "Int64", "iteration": "Int64", "tokens": "Int64"})


def lora_rewards(summary: pd.DataFrame) -> pd.DataFrame:
    """The ES-with-LoRA blog's table, per seed, task and method: the mean test reward, its standard error over
    the test prompts and their total at the run's best iteration, and the mean at its final iteration (the
    base model: its own, at iteration 0). `summary`: esft.evaluate.test_curve.summarise rows."""
    rows = []
    for checkpoint, points in summary.groupby("checkpoint", sort=False):
        for task, on_task in points.groupby("task", sort=False):
            if checkpoint != "base" and task != on_task["trained_task"].iloc[0]:
                continue
            on_task = on_task.sort_values("iteration")
            best = on_task[on_task["best"].astype(bool)] if checkpoint != "base" else on_task
            first, last = best.iloc[0], on_task.iloc[-1]
            rows.append({"seed": first["seed"], "task": task, "method": first["method"],
                         "best_iteration": int(first["iteration"]), "reward": float(first["reward"]),
                         "sem": float(first["sem"]), "total": float(first["total"]),
                         "final_iteration": int(last["iteration"]), "final_reward": float(last["reward"])})
    return pd.DataFrame(rows).astype({"seed": "Int64"})
