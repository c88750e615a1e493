"""Matplotlib figures, drawn only from files that earlier stages wrote; one style (esft.plots.style)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from esft.geometry.drift import GROUPS, KINDS
from esft.io import read_jsonl
from esft.labels import split_seed
from esft.plots import style
from esft.plots.style import plt

style.apply()

Outs = Sequence[str | Path] | str | Path


def _method(label: str) -> str:
    return split_seed(label)[1].split("/", 1)[0]


def _runs_by_training(runs: Mapping[str, str | Path]) -> dict[str, dict[str, list[list[dict]]]]:
    """run.jsonl records of [seed-S/]METHOD/SCHEDULE/K-TASK labels, grouped by what was trained
    (SCHEDULE/K-TASK), then by method (one record list per seed): the runs drawn side by side in one panel."""
    grouped: dict[str, dict[str, list[list[dict]]]] = {}
    for label, path in runs.items():
        method, trained = split_seed(label)[1].split("/", 1)
        grouped.setdefault(trained, {}).setdefault(method, []).append(read_jsonl(path))
    return grouped


def _step_and_cost(axes, method: str, seeds: Sequence[Sequence[Mapping]], key: str, cost: str, smooth: int) -> None:
    """`key` of each seed's run (smoothed over `smooth` steps) against step (axes[0]) and cumulative `cost`
    (axes[1]), one line per seed in the method's colour, named once in the legend."""
    for i, records in enumerate(seeds):
        y = _smoothed(records, key, smooth)
        steps = [r["iteration"] + 1 for r in records]
        for ax, x in zip(axes, (steps, np.cumsum([r[cost] for r in records]))):
            ax.plot(x, y, color=style.method_color(method), lw=1 if len(seeds) > 1 else 1.5,
                    label=method if i == 0 else None)


def _spread(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Mean, min and max of `y` at each `x` over the seeds (rows) of `df`, sorted by `x`."""
    return df.groupby(x)[y].agg(["mean", "min", "max"]).reset_index().sort_values(x)


def _band(ax, spread: pd.DataFrame, x: str, color=None, label: str | None = None, **line) -> None:
    """The seeds' mean as a line and their min-max range as a shaded band around it (none for one seed)."""
    lines = ax.plot(spread[x], spread["mean"], color=color, label=label, **line)
    if (spread["max"] > spread["min"]).any():
        ax.fill_between(spread[x], spread["min"], spread["max"], color=lines[0].get_color(), alpha=0.2, lw=0)


def _seeds_note(df: pd.DataFrame) -> str:
    n = df["seed"].nunique() if "seed" in df else 0
    return f" (mean of {n} seeds, band: min-max)" if n > 1 else ""


def _smoothed(records: Sequence[Mapping], key: str, window: int) -> pd.Series:
    """`key` of each record as a trailing moving average over `window` steps (1 = raw)."""
    return pd.Series([r[key] for r in records]).rolling(window, min_periods=1).mean()


def accuracy_sequential(acc: pd.DataFrame, out: Outs, dpi: int = 120) -> None:
    """Figure 1: accuracy on every task (lines) after each sequential stage (x), one panel per method; the
    mean over seeds, their min-max range shaded."""
    seq = acc[acc["schedule"] == "sequential"]
    methods = sorted(seq["method"].dropna().unique())
    if not methods:
        raise ValueError("no sequential checkpoints in the accuracy table")
    base = acc[acc["checkpoint"] == "base"]
    fig, axes = plt.subplots(1, len(methods), figsize=style.figsize(len(methods), 2.6), squeeze=False, sharey=True)
    for ax, method in zip(axes[0], methods):
        rows = pd.concat([base, seq[seq["method"] == method]])
        stages = rows.drop_duplicates("stage").sort_values("stage")
        labels = ["base" if s == 0 else f"{s}: {t}" for s, t in zip(stages["stage"], stages["trained_task"])]
        for task, group in rows.groupby("eval_task"):
            _band(ax, _spread(group, "stage", "accuracy"), "stage", marker="o", label=task)
        ax.set_xticks(list(stages["stage"]), labels, rotation=25, ha="right")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("after training stage")
        ax.set_title(f"{method}: sequential training", color=style.method_color(method))
    axes[0][0].set_ylabel("test accuracy (fraction correct)" + _seeds_note(seq).replace(" (", "\n("))
    axes[0][-1].legend(title="evaluated on", loc="center left", bbox_to_anchor=(1.0, 0.5))
    style.save(fig, out, dpi)


def kl_sequential(kl: pd.DataFrame, outs: Outs, dpi: int = 120) -> None:
    """Figure 2: KL heatmaps of sequential training, one column of panels per method: KL(π_{k−1} ‖ π_k)
    (top) and KL(π_0 ‖ π_k) (bottom), arguments swapped for `evaluate.kl.direction: reverse`; rows =
    training stage k, columns = evaluated task; each cell the mean over seeds, with their min-max range
    beneath it when there are several."""
    seq = kl[kl["schedule"] == "sequential"]
    methods = sorted(seq["method"].unique())
    if not methods:
        raise ValueError("no sequential checkpoints in the KL table")
    order = (lambda a, b: (b, a)) if set(seq.get("direction", ["forward"])) == {"reverse"} else (lambda a, b: (a, b))
    references = {ref: r"$\mathrm{KL}(%s \,\Vert\, %s)$" % order(earlier, r"\pi_k")
                  for ref, earlier in (("previous", r"\pi_{k-1}"), ("base", r"\pi_0"))}
    width = max(4.0, 1.1 * seq["eval_task"].nunique() + 2.5)
    height = 1.5 + 0.5 * seq["stage"].nunique()
    fig, axes = plt.subplots(len(references), len(methods), figsize=(width * len(methods), height * len(references)),
                             squeeze=False)
    for row, (reference, title) in enumerate(references.items()):
        ref = seq[seq["reference"] == reference]
        vmax = max(float(ref["kl"].max()), 1e-12)  # one scale per reference, shared by the methods
        for ax, method in zip(axes[row], methods):
            cells = ref[ref["method"] == method]
            table, lo, hi = (cells.pivot_table(index=["stage", "trained_task"], columns="eval_task", values="kl",
                                               aggfunc=agg) for agg in ("mean", "min", "max"))
            image = ax.imshow(table.to_numpy(), cmap="magma_r", vmin=0, vmax=vmax, aspect="auto")
            for (i, j), value in pd.DataFrame(table.to_numpy()).stack().items():
                spread = f"\n[{lo.iat[i, j]:.2g}, {hi.iat[i, j]:.2g}]" if hi.iat[i, j] > lo.iat[i, j] else ""
                ax.text(j, i, f"{value:.3g}{spread}", ha="center", va="center", fontsize=7 if spread else 8,
                        color="white" if value > 0.6 * vmax else "black")
            ax.set_xticks(range(table.shape[1]), list(table.columns), rotation=20)
            ax.set_yticks(range(table.shape[0]), [f"{k}: {t}" for k, t in table.index])
            ax.set_xlabel("evaluated on (held-out prompts)")
            ax.set_ylabel("after training stage")
            n = cells["seed"].nunique() if "seed" in cells else 0
            ax.set_title(f"{method}: {title}" + (f" (mean of {n} seeds)" if n > 1 else ""), fontsize=10)
            fig.colorbar(image, ax=ax, label="nats / token")
    fig.tight_layout()
    style.save(fig, outs, dpi)


def training_fitness(runs: Mapping[str, str | Path], out: Outs, dpi: int = 120) -> None:
    """Mean training reward per step (the common run.jsonl field of every method), and the best ES
    member where the run logs one; one panel per training run (its seeds' mean, min-max shaded), in its
    method's colour."""
    by_run: dict[str, list[pd.DataFrame]] = {}
    for label, path in runs.items():
        by_run.setdefault(split_seed(label)[1], []).append(pd.DataFrame(read_jsonl(path)))
    n = len(by_run)
    cols = min(n, 3)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, squeeze=False,
                             figsize=style.figsize(cols * 2 / 3, 2.0 * math.ceil(n / cols)))
    for ax, (label, seeds) in zip(axes.flat, by_run.items()):
        records = pd.concat(seeds).assign(step=lambda d: d["iteration"] + 1)
        color = style.method_color(_method(label))
        _band(ax, _spread(records, "step", "reward_mean"), "step", color=color, label="mean reward")
        if "fitness_max" in records:
            _band(ax, _spread(records, "step", "fitness_max"), "step", color=color, ls="--", alpha=0.6,
                  label="best ES member")
        ax.set_title(label + (f" ({len(seeds)} seeds)" if len(seeds) > 1 else ""))
        ax.set_xlabel("step (iteration or optimizer step)")
        ax.set_ylabel("training reward")
        ax.legend()
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    style.save(fig, out, dpi)


def training_curves(runs: Mapping[str, str | Path], out: Outs, dpi: int = 120, smooth: int = 1) -> None:
    """Training reward of every method on each trained run (columns), against step (top) and against
    cumulative generated tokens (bottom), so methods compare at equal generation cost; one line per seed.

    `smooth`: trailing moving-average window in steps (1 = raw)."""
    by_run = _runs_by_training(runs)
    cols = len(by_run)
    fig, axes = plt.subplots(2, cols, squeeze=False, figsize=style.figsize(max(1.0, cols * 0.6), 4.0))
    for col, (rest, methods) in enumerate(by_run.items()):
        for method, seeds in methods.items():
            _step_and_cost((axes[0][col], axes[1][col]), method, seeds, "reward_mean", "tokens", smooth)
        axes[0][col].set_title(rest)
        axes[0][col].set_xlabel("step")
        axes[1][col].set_xlabel("generated tokens (cumulative)")
        axes[1][col].ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    for row in range(2):
        axes[row][0].set_ylabel("training reward (mean)")
    axes[0][-1].legend(loc="best")
    fig.tight_layout()
    style.save(fig, out, dpi)


def pretraining_loss(runs: Mapping[str, str | Path], out: Outs, dpi: int = 120, smooth: int = 1,
                     log_tokens: bool = True) -> None:
    """EA4LLM: the loss (run.jsonl `loss`, mean token NLL on the iteration's minibatch of the weights before
    the step: ES's centre θ, AdamW's current weights) of every pretraining run, one row per trained run
    (schedule/stage-task), against step (left) and against cumulative tokens scored (`prompt_tokens`, right).

    `smooth`: trailing moving-average window in steps (1 = raw)."""
    by_run = _runs_by_training(runs)
    for rest, methods in by_run.items():
        for method, records in ((m, r) for m, seeds in methods.items() for r in seeds):
            if any("loss" not in r for r in records):
                raise ValueError(f"{method}/{rest}: run.jsonl has no `loss` (an ES run logs it only with fitness "
                                 "loglik)")
    fig, axes = plt.subplots(len(by_run), 2, squeeze=False, figsize=style.figsize(2.0, 2.4 * len(by_run)))
    for row, (rest, methods) in enumerate(by_run.items()):
        for method, seeds in methods.items():
            _step_and_cost((axes[row][0], axes[row][1]), method, seeds, "loss", "prompt_tokens", smooth)
        axes[row][0].set_title(f"{rest}: loss against step")
        axes[row][1].set_title(f"{rest}: loss against tokens scored")
        axes[row][0].set_xlabel("step (iteration or optimizer step)")
        axes[row][1].set_xlabel("tokens scored (cumulative)")
        if log_tokens:
            axes[row][1].set_xscale("log")
        for ax in axes[row]:
            ax.set_ylabel("loss (mean token NLL, nats)")
        axes[row][0].legend(loc="best")
    fig.tight_layout()
    style.save(fig, out, dpi)


def interpolation(df: pd.DataFrame, methods: Sequence[str], out: Outs, dpi: int = 120,
                  per_task: bool = True) -> None:
    """Figure 3: accuracy along θ(λ) = (1−λ)θ_a + λθ_b, one panel per checkpoint pair; the mean over
    tasks bold, each task thin (`per_task`), the straight line between the endpoints dotted; lines are the
    mean over seeds, their min-max range shaded."""
    from esft.geometry.interpolation import with_mean

    keys = ["schedule", "stage", "trained_task"]
    df = with_mean(df, keys + (["seed"] if "seed" in df else []) + ["lambda"])
    groups = list(df.groupby(keys, sort=True))
    cols = min(len(groups), 4)
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False, sharey=True,
                             figsize=style.figsize(max(1.0, cols * 0.55), 2.2 * rows))
    a, b = methods
    for ax, ((schedule, stage, trained), g) in zip(axes.flat, groups):
        mean = _spread(g[g["task"] == "mean"], "lambda", "accuracy")
        if per_task:
            for task, t in g[g["task"] != "mean"].groupby("task"):
                _band(ax, _spread(t, "lambda", "accuracy"), "lambda", lw=0.8, alpha=0.7, label=task)
        _band(ax, mean, "lambda", color="black", lw=2, marker="o", label="mean")
        ends = mean[mean["lambda"].isin([0.0, 1.0])]
        ax.plot(ends["lambda"], ends["mean"], color="black", ls=":", lw=1)
        ax.scatter([0], ends["mean"].iloc[:1], color=style.method_color(a), zorder=3, s=25)
        ax.scatter([1], ends["mean"].iloc[-1:], color=style.method_color(b), zorder=3, s=25)
        ax.set_title(f"{schedule} {stage}: {trained}")
        ax.set_xlabel(f"λ (0 = {a}, 1 = {b})")
        ax.set_ylim(-0.02, 1.02)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    for r in range(rows):
        axes[r][0].set_ylabel("test accuracy")
    axes[0][min(cols, len(groups)) - 1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    style.save(fig, out, dpi)


def probes(df: pd.DataFrame, out: Outs, dpi: int = 120, random_band: bool = False) -> None:
    """Figure 4: accuracy on the trained task along θ₀ + c·d/‖d‖, rows = checkpoints; m's direction in its
    colour, random directions grey (separate lines, or their min-max band with `random_band`). Relative
    axis: one column per reference method m, x = s = c/‖Δ_m‖; absolute axis (the paper's): one panel per
    checkpoint, x = c shared by every method and the random directions."""
    keys = ["schedule", "stage", "trained_task"]
    rows = [(f"{stage}-{task}", f"accuracy on {task}", g) for (_, stage, task), g in df.groupby(keys, sort=True)]
    fig, axes = _direction_panels(rows, "accuracy", random_band, sharey=True)
    for ax in axes.flat:
        ax.set_ylim(-0.02, 1.02)
    fig.tight_layout()
    style.save(fig, out, dpi)


def probes_holdout(df: pd.DataFrame, out: Outs, dpi: int = 120, random_band: bool = False) -> None:
    """Figure 5: change of each holdout benchmark's headline metric from θ₀ along the probe directions of
    Figure 4 (its axis), rows = (checkpoint, benchmark); a direction that leaves the holdouts as a random
    one does stays inside the grey lines (or band, `random_band`)."""
    from esft.geometry.probe_holdout import KEYS, headline_changes

    changes = headline_changes(df)
    rows = [(f"{stage}-{task}", f"{bench} {g['metric'].iloc[0]}\nchange from θ₀ = {g['theta0'].iloc[0]:.3g}", g)
            for (_, stage, task, bench), g in changes.groupby([*KEYS, "benchmark"], sort=True)]
    fig, axes = _direction_panels(rows, "change", random_band, sharey="row")
    for ax in axes.flat:
        ax.axhline(0.0, color="black", lw=0.6)
    fig.tight_layout()
    style.save(fig, out, dpi)


def _random_lines(ax, rand: pd.DataFrame, x: str, value: str, random_band: bool) -> None:
    """The random directions of one panel: a grey line each, or their min-max band."""
    if rand.empty:
        return
    if random_band:
        band = rand.groupby(x)[value].agg(["min", "max"]).reset_index()
        ax.fill_between(band[x], band["min"], band["max"], color=style.method_color("random"), alpha=0.4,
                        label="random (min-max)")
        return
    for i, (_, t) in enumerate(rand.groupby("direction")):
        mean = _spread(t, x, value)  # the seeds' mean (each seed probes the same seeded directions)
        ax.plot(mean[x], mean["mean"], color=style.method_color("random"), lw=0.9, label="random" if i == 0 else None)


def _direction_panels(rows: Sequence[tuple[str, str, pd.DataFrame]], value: str, random_band: bool,
                      sharey: bool | str):
    """(fig, axes) of the probe grid that Figures 4 and 5 share: one row per (title, y label, table).
    Relative axis: one column per reference method m, x = s in units of ‖Δ_m‖ (s = 1, dotted, is m's
    checkpoint). Absolute axis: one column, x = the distance c from θ₀ (symmetric-log), every method's
    direction and the random ones on it, each checkpoint's ‖Δ_m‖ dotted."""
    table = pd.concat([g for _, _, g in rows])
    refs = list(dict.fromkeys(table["reference"]))
    absolute = "axis" in table and (table["axis"] == "absolute").all()
    cols = 1 if absolute else len(refs)
    fig, axes = plt.subplots(len(rows), cols, squeeze=False, sharey=sharey,
                             figsize=style.figsize(max(1.0, 0.6 * cols), 1.9 * len(rows)))
    for r, (title, ylabel, sub) in enumerate(rows):
        if absolute:
            ax = axes[r][0]
            rand = sub[~sub["direction"].isin(refs)].drop_duplicates(["direction", "distance"])
            _random_lines(ax, rand, "distance", value, random_band)
            norms = []
            for ref in refs:
                own = sub[(sub["reference"] == ref) & (sub["direction"] == ref)]
                at = own.loc[own["scale"] == 1.0, "distance"]
                norm = float(at.mean()) if not at.empty else float("nan")
                norms.append(f"‖Δ_{ref}‖ = {norm:.3g}")
                _band(ax, _spread(own, "distance", value), "distance", color=style.method_color(ref), marker="o",
                      ms=3, label=f"{ref} direction")
                ax.axvline(norm, color=style.method_color(ref), ls=":", lw=0.8)
            positive = sub.loc[sub["distance"] > 0, "distance"]
            if not positive.empty:
                ax.set_xscale("symlog", linthresh=float(positive.min()))
            ax.set_title(f"{title} ({', '.join(norms)})")
            ax.set_xlabel("c: distance from θ₀ along d/‖d‖")
            if r == 0:
                ax.legend(loc="best", fontsize=6)
        for c, ref in enumerate([] if absolute else refs):
            ax = axes[r][c]
            g = sub[sub["reference"] == ref]
            own = g[g["direction"] == ref]
            _random_lines(ax, g[g["direction"] != ref], "scale", value, random_band)
            _band(ax, _spread(own, "scale", value), "scale", color=style.method_color(ref), marker="o",
                  label=f"{ref} direction")
            ax.axvline(1.0, color=style.method_color(ref), ls=":", lw=0.8)
            norm = (own["distance"] / own["scale"]).replace([np.inf], np.nan).mean()
            ax.set_title(f"{title}: {ref} (‖Δ‖ = {norm:.3g})")
            ax.set_xlabel(f"s: distance / ‖Δ_{ref}‖")
            if r == 0:
                ax.legend(loc="best")
        axes[r][0].set_ylabel(ylabel + _seeds_note(sub).replace(" (", "\n("))
    return fig, axes


def drift(series: pd.DataFrame, kinds: pd.DataFrame, out: Outs, dpi: int = 120, log_scale: bool = False,
          params: pd.DataFrame | None = None) -> None:
    """Figure 6: (a) ||θ_t − θ₀||² against step per run, ES with Proposition 1's line α²·D·t/N dashed;
    (b) D_eff/D = slope·N/(α²·D_param) per parameter kind and method (median over its runs' parameters,
    min-max bar) of runs with a theory; with `params` (drift_params.csv), the paper's Fig. 10: every tensor's
    D_eff/D (c) and R² (d) of its through-origin fit, large matrices and norm weights side by side, per run
    with a theory. Every seed's run is drawn; the legends name each run once."""
    panels = 2 if params is None else 4
    fig, axes = plt.subplots(1, panels, figsize=style.figsize(panels, 2.6), squeeze=False)
    ax, bx = axes[0][0], axes[0][1]
    named = set()
    for run, g in series.groupby("run", sort=False):
        color = style.method_color(_method(run))
        name = split_seed(run)[1]
        ax.plot(g["step"], g["drift_sq"], color=color, alpha=0.85, label=None if name in named else name)
        named.add(name)
        if g["theory_sq"].notna().all():
            ax.plot(g["step"], g["theory_sq"], color=color, ls="--", lw=0.8, alpha=0.7)
    ax.plot([], [], color="black", ls="--", lw=0.8, label="α²·D·t/N (Prop. 1)")
    ax.set_xlabel("training step t")
    ax.set_ylabel("‖θ_t − θ₀‖² (squared L2)")
    if log_scale:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.legend(fontsize=6)
    ax.set_title("(a) drift from the run's start")
    k = kinds.dropna(subset=["deff_ratio_median"])
    k = k.assign(method=k["run"].map(_method)).groupby(["method", "kind"], sort=False).agg(
        deff_ratio_median=("deff_ratio_median", "median"), deff_ratio_min=("deff_ratio_min", "min"),
        deff_ratio_max=("deff_ratio_max", "max"), runs=("run", "nunique")).reset_index()
    order = [kind for kind in KINDS if kind in set(k["kind"])]
    n_methods = max(1, k["method"].nunique())
    for i, (method, g) in enumerate(k.groupby("method", sort=False)):
        x = np.array([order.index(kind) for kind in g["kind"]]) + 0.6 * ((i + 0.5) / n_methods - 0.5)
        med = g["deff_ratio_median"].to_numpy()
        bx.errorbar(x, med, yerr=[med - g["deff_ratio_min"].to_numpy(), g["deff_ratio_max"].to_numpy() - med],
                    fmt="o", color=style.method_color(method), capsize=2, label=f"{method} ({g['runs'].max()} runs)")
    bx.set_xticks(np.arange(len(order)), order, rotation=30, ha="right")
    bx.axhline(1.0, color="black", ls="--", lw=0.8)
    bx.set_ylabel("D_eff / D (1 = isotropic random walk)")
    bx.set_title("(b) effective dimension per parameter kind")
    if not k.empty:
        bx.legend(fontsize=6)
    if params is not None:
        _drift_groups(axes[0][2], axes[0][3], params.dropna(subset=["deff_ratio"]))
    fig.tight_layout()
    style.save(fig, out, dpi)


GROUPS_ORDER = list(dict.fromkeys(GROUPS.values()))


def _drift_groups(cx, dx, params: pd.DataFrame) -> None:
    """Per-tensor D_eff/D and R² strips, one column per group (large matrices, norm weights), runs side by side."""
    groups = [g for g in GROUPS_ORDER if g in set(params["group"])]
    runs = list(dict.fromkeys(params["run"]))
    jitter = np.random.default_rng(0)
    for i, run in enumerate(runs):
        mine = params[params["run"] == run]
        for ax, column in ((cx, "deff_ratio"), (dx, "r2")):
            x = np.array([groups.index(g) for g in mine["group"]], dtype=float)
            x += 0.6 * ((i + 0.5) / len(runs) - 0.5) + jitter.uniform(-0.08, 0.08, len(x))
            ax.scatter(x, mine[column], s=6, alpha=0.6, color=style.method_color(_method(run)), label=run)
    for ax, ylabel, title in ((cx, "D_eff / D per tensor", "(c) per-parameter effective dimension"),
                              (dx, "R² of the linear fit per tensor", "(d) per-parameter linearity")):
        ax.set_xticks(np.arange(len(groups)), groups)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
    cx.axhline(1.0, color="black", ls="--", lw=0.8)
    if runs:
        cx.legend(fontsize=6)


# --- ES with LoRA (blog): full-parameter vs LoRA ES on one task ---------------------------------
def _reward_label(task: str) -> str:
    from esft.tasks import get_task

    return get_task(task).reward_label


def _checkpoints(df: pd.DataFrame) -> list[str]:
    """Checkpoints in plotting order: the base first, then as the methods come."""
    labels = list(dict.fromkeys(df["checkpoint"]))
    return sorted(labels, key=lambda label: label != "base")


def _named(rows: pd.DataFrame) -> str:
    """A checkpoint's legend entry: its method, with the iteration of a trained model."""
    method = rows["method"].iloc[0]
    return method if method == "base" else f"{method} @ {int(rows['iteration'].iloc[0])}"


def lora_prompt_rewards(df: pd.DataFrame, out: Outs, dpi: int = 120) -> None:
    """Reward of each test prompt's greedy completion, base vs each method's model at its best iteration
    (rows of esft.evaluate.test_curve.at_best): grouped bars, one panel per task."""
    tasks = list(dict.fromkeys(df["task"]))
    n_prompts = max(df.groupby("task")["index"].nunique())
    fig, axes = plt.subplots(len(tasks), 1, squeeze=False, figsize=style.figsize(max(1.0, 0.25 * n_prompts),
                                                                                 2.6 * len(tasks)))
    for ax, task in zip(axes[:, 0], tasks):
        on_task = df[df["task"] == task]
        labels = _checkpoints(on_task)
        width = 0.8 / len(labels)
        for i, label in enumerate(labels):
            rows = on_task[on_task["checkpoint"] == label].sort_values("index")
            ax.bar(rows["index"] + (i - (len(labels) - 1) / 2) * width, rows["reward"], width,
                   color=style.method_color(rows["method"].iloc[0]), label=_named(rows))
        prompts = on_task.drop_duplicates("index").sort_values("index")
        ax.set_xticks(prompts["index"], [p if len(p) <= 24 else p[:23] + "…" for p in prompts["prompt"]],
                      rotation=30, ha="right")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xlabel(f"{task} test prompt")
        ax.set_ylabel(_reward_label(task))
        ax.legend(loc="best")
    fig.tight_layout()
    style.save(fig, out, dpi)


def lora_cumulative_reward(df: pd.DataFrame, out: Outs, dpi: int = 120) -> None:
    """Running total of the test reward over the task's test prompts in file order, base vs each method's
    model at its best iteration; the last point is the model's total test reward (in the legend)."""
    tasks = list(dict.fromkeys(df["task"]))
    fig, axes = plt.subplots(1, len(tasks), squeeze=False, figsize=style.figsize(max(1.0, 0.8 * len(tasks)), 2.4))
    for ax, task in zip(axes[0], tasks):
        on_task = df[df["task"] == task]
        for label in _checkpoints(on_task):
            rows = on_task[on_task["checkpoint"] == label].sort_values("index")
            total = rows["reward"].cumsum()
            ax.plot(np.arange(1, len(rows) + 1), total, color=style.method_color(rows["method"].iloc[0]), marker="o",
                    drawstyle="steps-post", label=f"{_named(rows)} (total {total.iloc[-1]:.4g})")
        ax.set_xlabel(f"{task} test prompts counted")
        ax.set_ylabel(f"cumulative {_reward_label(task)}")
        ax.legend(loc="best")
    fig.tight_layout()
    style.save(fig, out, dpi)


def lora_training(runs: Mapping[str, str | Path], curves: pd.DataFrame, out: Outs, dpi: int = 120,
                  smooth: int = 1) -> None:
    """Per trained task (a row): the mean training reward per iteration of each compared run (run.jsonl;
    left) beside its mean test reward along training (esft.evaluate.test_curve summary: the base at 0, the
    best iteration starred; right).

    `smooth`: trailing moving-average window of the training reward in iterations (1 = raw)."""
    by_task = {trained.split("-", 1)[1]: methods for trained, methods in _runs_by_training(runs).items()}
    fig, axes = plt.subplots(len(by_task), 2, squeeze=False, sharex="row",
                             figsize=style.figsize(1.6, 2.4 * len(by_task)))
    for (train_ax, test_ax), (task, methods) in zip(axes, by_task.items()):
        for method, seeds in methods.items():
            for i, records in enumerate(seeds):
                reward = _smoothed(records, "reward_mean", smooth)
                train_ax.plot([r["iteration"] + 1 for r in records], reward, color=style.method_color(method),
                              label=method if i == 0 else None)
        on_task = curves[curves["task"] == task]
        base = on_task[on_task["checkpoint"] == "base"]
        for i, (label, rows) in enumerate(on_task[on_task["trained_task"] == task].groupby("checkpoint", sort=False)):
            rows = pd.concat([base, rows]).sort_values("iteration")
            color = style.method_color(rows["method"].iloc[-1])
            test_ax.plot(rows["iteration"], rows["reward"], color=color, marker=".")
            best = rows[rows["best"].astype(bool)]
            test_ax.plot(best["iteration"], best["reward"], color=color, marker="*", ms=10, ls="none",
                         label=f"{rows['method'].iloc[-1]}: best {int(best['iteration'].iloc[0])}")
        train_ax.set_ylabel(f"training {_reward_label(task)}\n(population mean)")
        test_ax.set_ylabel(f"test {_reward_label(task)}\n(mean over prompts)")
        for ax, what in ((train_ax, "training"), (test_ax, "test")):
            ax.set_xlabel("iteration")
            ax.set_title(f"{task}: {what}")
            ax.legend(loc="best")
    fig.tight_layout()
    style.save(fig, out, dpi)


# --- LBES vs ES: test accuracy against training cost --------------------------------------------
def accuracy_vs_cost(curves: pd.DataFrame, out: Outs, dpi: int = 120) -> None:
    """Test accuracy of each method's models along training (esft.evaluate.curves points: base, replayed
    iterations, final) against cumulative training wall time (top) and generated tokens (bottom), one
    column per task."""
    tasks = list(dict.fromkeys(curves["task"]))
    fig, axes = plt.subplots(2, len(tasks), squeeze=False, sharey=True,
                             figsize=style.figsize(max(1.0, 0.8 * len(tasks)), 4.2))
    for col, task in enumerate(tasks):
        on_task = curves[curves["task"] == task]
        by_run = on_task.groupby(["method", on_task["seed"].fillna(-1)] if "seed" in on_task else "method", sort=False)
        named = set()
        for key, points in by_run:
            method = key[0] if isinstance(key, tuple) else key
            points = points.sort_values("iteration")
            for row, x in enumerate(("seconds", "tokens")):
                axes[row][col].plot(points[x], points["accuracy"], color=style.method_color(method), marker="o",
                                    label=None if method in named else method)
            named.add(method)
        axes[0][col].set_title(task)
        axes[0][col].set_xlabel("training wall time (s, cumulative)")
        axes[1][col].set_xlabel("generated tokens (cumulative)")
        axes[1][col].ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
        for row in range(2):
            axes[row][col].set_ylim(-0.02, 1.02)
    for row in range(2):
        axes[row][0].set_ylabel("test accuracy (fraction correct)")
    axes[0][-1].legend(loc="best")
    fig.tight_layout()
    style.save(fig, out, dpi)
