"""Matplotlib figures, drawn only from files that earlier stages wrote; one style (esft.plots.style)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from esft.geometry.drift import KINDS
from esft.io import read_jsonl
from esft.plots import style
from esft.plots.style import plt

style.apply()

Outs = Sequence[str | Path] | str | Path


def _method(label: str) -> str:
    return label.split("/", 1)[0]


def _runs_by_training(runs: Mapping[str, str | Path]) -> dict[str, dict[str, list[dict]]]:
    """run.jsonl records of METHOD/SCHEDULE/K-TASK labels, grouped by what was trained (SCHEDULE/K-TASK),
    then by method: the runs drawn side by side in one panel."""
    grouped: dict[str, dict[str, list[dict]]] = {}
    for label, path in runs.items():
        method, trained = label.split("/", 1)
        grouped.setdefault(trained, {})[method] = read_jsonl(path)
    return grouped


def _smoothed(records: Sequence[Mapping], key: str, window: int) -> pd.Series:
    """`key` of each record as a trailing moving average over `window` steps (1 = raw)."""
    return pd.Series([r[key] for r in records]).rolling(window, min_periods=1).mean()


def accuracy_sequential(acc: pd.DataFrame, out: Outs, dpi: int = 120) -> None:
    """Figure 1: accuracy on every task (lines) after each sequential stage (x), one panel per method."""
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
            group = group.sort_values("stage")
            ax.plot(group["stage"], group["accuracy"], marker="o", label=task)
        ax.set_xticks(list(stages["stage"]), labels, rotation=25, ha="right")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("after training stage")
        ax.set_title(f"{method}: sequential training", color=style.method_color(method))
    axes[0][0].set_ylabel("test accuracy (fraction correct)")
    axes[0][-1].legend(title="evaluated on", loc="center left", bbox_to_anchor=(1.0, 0.5))
    style.save(fig, out, dpi)


def kl_sequential(kl: pd.DataFrame, outs: Outs, dpi: int = 120) -> None:
    """Figure 2: KL heatmaps of sequential training, one column of panels per method: KL(π_{k−1} ‖ π_k)
    (top) and KL(π_0 ‖ π_k) (bottom), arguments swapped for `evaluate.kl.direction: reverse`; rows =
    training stage k, columns = evaluated task."""
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
            table = ref[ref["method"] == method].pivot_table(index=["stage", "trained_task"], columns="eval_task",
                                                             values="kl")
            image = ax.imshow(table.to_numpy(), cmap="magma_r", vmin=0, vmax=vmax, aspect="auto")
            for (i, j), value in pd.DataFrame(table.to_numpy()).stack().items():
                ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=8,
                        color="white" if value > 0.6 * vmax else "black")
            ax.set_xticks(range(table.shape[1]), list(table.columns), rotation=20)
            ax.set_yticks(range(table.shape[0]), [f"{k}: {t}" for k, t in table.index])
            ax.set_xlabel("evaluated on (held-out prompts)")
            ax.set_ylabel("after training stage")
            ax.set_title(f"{method}: {title}", fontsize=10)
            fig.colorbar(image, ax=ax, label="nats / token")
    fig.tight_layout()
    style.save(fig, outs, dpi)


def training_fitness(runs: Mapping[str, str | Path], out: Outs, dpi: int = 120) -> None:
    """Mean training reward per step (the common run.jsonl field of every method), and the best ES
    member where the run logs one; one panel per training run, in its method's colour."""
    n = len(runs)
    cols = min(n, 3)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, squeeze=False,
                             figsize=style.figsize(cols * 2 / 3, 2.0 * math.ceil(n / cols)))
    for ax, (label, path) in zip(axes.flat, runs.items()):
        records = read_jsonl(path)
        it = [r["iteration"] + 1 for r in records]
        color = style.method_color(_method(label))
        ax.plot(it, [r["reward_mean"] for r in records], color=color, label="mean reward")
        if records and "fitness_max" in records[0]:
            ax.plot(it, [r["fitness_max"] for r in records], color=color, ls="--", alpha=0.6, label="best ES member")
        ax.set_title(label)
        ax.set_xlabel("step (iteration or optimizer step)")
        ax.set_ylabel("training reward")
        ax.legend()
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    style.save(fig, out, dpi)


def training_curves(runs: Mapping[str, str | Path], out: Outs, dpi: int = 120, smooth: int = 1) -> None:
    """Training reward of every method on each trained run (columns), against step (top) and against
    cumulative generated tokens (bottom), so methods compare at equal generation cost.

    `smooth`: trailing moving-average window in steps (1 = raw)."""
    by_run = _runs_by_training(runs)
    cols = len(by_run)
    fig, axes = plt.subplots(2, cols, squeeze=False, figsize=style.figsize(max(1.0, cols * 0.6), 4.0))
    for col, (rest, methods) in enumerate(by_run.items()):
        for method, records in methods.items():
            reward = _smoothed(records, "reward_mean", smooth)
            steps = [r["iteration"] + 1 for r in records]
            tokens = np.cumsum([r["tokens"] for r in records])
            for row, x in enumerate((steps, tokens)):
                axes[row][col].plot(x, reward, color=style.method_color(method), label=method)
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
        for method, records in methods.items():
            if any("loss" not in r for r in records):
                raise ValueError(f"{method}/{rest}: run.jsonl has no `loss` (an ES run logs it only with fitness "
                                 "loglik)")
    fig, axes = plt.subplots(len(by_run), 2, squeeze=False, figsize=style.figsize(2.0, 2.4 * len(by_run)))
    for row, (rest, methods) in enumerate(by_run.items()):
        for method, records in methods.items():
            loss = _smoothed(records, "loss", smooth)
            steps = [r["iteration"] + 1 for r in records]
            tokens = np.cumsum([r["prompt_tokens"] for r in records])
            for col, x in enumerate((steps, tokens)):
                axes[row][col].plot(x, loss, color=style.method_color(method), label=method)
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
    tasks bold, each task thin (`per_task`), the straight line between the endpoints dotted."""
    from esft.geometry.interpolation import with_mean

    keys = ["schedule", "stage", "trained_task"]
    df = with_mean(df, keys + ["lambda"])
    groups = list(df.groupby(keys, sort=True))
    cols = min(len(groups), 4)
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False, sharey=True,
                             figsize=style.figsize(max(1.0, cols * 0.55), 2.2 * rows))
    a, b = methods
    for ax, ((schedule, stage, trained), g) in zip(axes.flat, groups):
        mean = g[g["task"] == "mean"].sort_values("lambda")
        if per_task:
            for task, t in g[g["task"] != "mean"].groupby("task"):
                t = t.sort_values("lambda")
                ax.plot(t["lambda"], t["accuracy"], lw=0.8, alpha=0.7, label=task)
        ax.plot(mean["lambda"], mean["accuracy"], color="black", lw=2, marker="o", label="mean")
        ends = mean[mean["lambda"].isin([0.0, 1.0])]
        ax.plot(ends["lambda"], ends["accuracy"], color="black", ls=":", lw=1)
        ax.scatter([0], ends["accuracy"].iloc[:1], color=style.method_color(a), zorder=3, s=25)
        ax.scatter([1], ends["accuracy"].iloc[-1:], color=style.method_color(b), zorder=3, s=25)
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
    """Figure 4: accuracy on the trained task along θ₀ + s·‖Δ_m‖·d/‖d‖, rows = checkpoints, columns =
    reference method m (s in units of m's own norm); m's direction in its colour, random directions grey
    (separate lines, or their min-max band with `random_band`)."""
    keys = ["schedule", "stage", "trained_task"]
    rows = [(f"{stage}-{task}", f"accuracy on {task}", g) for (_, stage, task), g in df.groupby(keys, sort=True)]
    fig, axes = _direction_panels(rows, "accuracy", random_band, sharey=True)
    for ax in axes.flat:
        ax.set_ylim(-0.02, 1.02)
    fig.tight_layout()
    style.save(fig, out, dpi)


def probes_holdout(df: pd.DataFrame, out: Outs, dpi: int = 120, random_band: bool = False) -> None:
    """Figure 5: change of each holdout benchmark's headline metric from θ₀ along the probe directions of
    Figure 4, rows = (checkpoint, benchmark), columns = reference method m; a direction that leaves the
    holdouts as a random one does stays inside the grey lines (or band, `random_band`)."""
    from esft.geometry.probe_holdout import KEYS, headline_changes

    changes = headline_changes(df)
    rows = [(f"{stage}-{task}", f"{bench} {g['metric'].iloc[0]}\nchange from θ₀ = {g['theta0'].iloc[0]:.3g}", g)
            for (_, stage, task, bench), g in changes.groupby([*KEYS, "benchmark"], sort=True)]
    fig, axes = _direction_panels(rows, "change", random_band, sharey="row")
    for ax in axes.flat:
        ax.axhline(0.0, color="black", lw=0.6)
    fig.tight_layout()
    style.save(fig, out, dpi)


def _direction_panels(rows: Sequence[tuple[str, str, pd.DataFrame]], value: str, random_band: bool,
                      sharey: bool | str):
    """(fig, axes) of the probe grid that Figures 4 and 5 share: one row per (title, y label, table), one
    column per reference method m, x = s in units of ‖Δ_m‖ (s = 1, dotted, is m's checkpoint)."""
    refs = list(dict.fromkeys(pd.concat([g for _, _, g in rows])["reference"]))
    fig, axes = plt.subplots(len(rows), len(refs), squeeze=False, sharey=sharey,
                             figsize=style.figsize(max(1.0, 0.6 * len(refs)), 1.9 * len(rows)))
    for r, (title, ylabel, sub) in enumerate(rows):
        for c, ref in enumerate(refs):
            ax = axes[r][c]
            g = sub[sub["reference"] == ref]
            own = g[g["direction"] == ref].sort_values("scale")
            rand = g[g["direction"] != ref]
            if random_band and not rand.empty:
                band = rand.groupby("scale")[value].agg(["min", "max"]).reset_index()
                ax.fill_between(band["scale"], band["min"], band["max"], color=style.method_color("random"),
                                alpha=0.4, label="random (min-max)")
            else:
                for i, (d, t) in enumerate(rand.groupby("direction")):
                    t = t.sort_values("scale")
                    ax.plot(t["scale"], t[value], color=style.method_color("random"), lw=0.9,
                            label="random" if i == 0 else None)
            ax.plot(own["scale"], own[value], color=style.method_color(ref), marker="o", label=f"{ref} direction")
            ax.axvline(1.0, color=style.method_color(ref), ls=":", lw=0.8)
            norm = own["distance"].max() / own["scale"].max() if own["scale"].max() > 0 else float("nan")
            ax.set_title(f"{title}: {ref} (‖Δ‖ = {norm:.3g})")
            ax.set_xlabel(f"s: distance / ‖Δ_{ref}‖")
            if r == 0:
                ax.legend(loc="best")
        axes[r][0].set_ylabel(ylabel)
    return fig, axes


def drift(series: pd.DataFrame, kinds: pd.DataFrame, out: Outs, dpi: int = 120, log_scale: bool = False) -> None:
    """Figure 6: (a) ||θ_t − θ₀||² against step per run, ES with Proposition 1's line α²·D·t/N dashed;
    (b) D_eff/D = slope·N/(α²·D_param) per parameter kind (median, min-max bar) of runs with a theory."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=style.figsize(2.0, 2.6))
    for run, g in series.groupby("run", sort=False):
        color = style.method_color(_method(run))
        ax.plot(g["step"], g["drift_sq"], color=color, alpha=0.85, label=run)
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
    order = [kind for kind in KINDS if kind in set(k["kind"])]
    n_runs = max(1, k["run"].nunique())
    for i, (run, g) in enumerate(k.groupby("run", sort=False)):
        x = np.array([order.index(kind) for kind in g["kind"]]) + 0.6 * ((i + 0.5) / n_runs - 0.5)
        med = g["deff_ratio_median"].to_numpy()
        bx.errorbar(x, med, yerr=[med - g["deff_ratio_min"].to_numpy(), g["deff_ratio_max"].to_numpy() - med],
                    fmt="o", color=style.method_color(_method(run)), capsize=2, label=run)
    bx.set_xticks(np.arange(len(order)), order, rotation=30, ha="right")
    bx.axhline(1.0, color="black", ls="--", lw=0.8)
    bx.set_ylabel("D_eff / D (1 = isotropic random walk)")
    bx.set_title("(b) effective dimension per parameter kind")
    if not k.empty:
        bx.legend(fontsize=6)
    fig.tight_layout()
    style.save(fig, out, dpi)


# --- ES with LoRA (blog): full-parameter vs LoRA ES on one task ---------------------------------
def _reward_label(task: str) -> str:
    from esft.tasks import get_task

    return get_task(task).reward_label


def _checkpoints(df: pd.DataFrame) -> list[str]:
    """Checkpoints in plotting order: the base first, then as the methods come."""
    labels = list(dict.fromkeys(df["checkpoint"]))
    return sorted(labels, key=lambda label: label != "base")


def lora_prompt_rewards(df: pd.DataFrame, out: Outs, dpi: int = 120) -> None:
    """Reward of each test prompt's greedy completion, base vs each method's final model: grouped bars,
    one panel per task (rows of esft.evaluate.prompts)."""
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
            method = rows["method"].iloc[0]
            ax.bar(rows["index"] + (i - (len(labels) - 1) / 2) * width, rows["reward"], width,
                   color=style.method_color(method), label=method)
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
    final model; the last point is the model's total test reward (in the legend)."""
    tasks = list(dict.fromkeys(df["task"]))
    fig, axes = plt.subplots(1, len(tasks), squeeze=False, figsize=style.figsize(max(1.0, 0.8 * len(tasks)), 2.4))
    for ax, task in zip(axes[0], tasks):
        on_task = df[df["task"] == task]
        for label in _checkpoints(on_task):
            rows = on_task[on_task["checkpoint"] == label].sort_values("index")
            total = rows["reward"].cumsum()
            method = rows["method"].iloc[0]
            ax.plot(np.arange(1, len(rows) + 1), total, color=style.method_color(method), marker="o",
                    drawstyle="steps-post", label=f"{method} (total {total.iloc[-1]:.4g})")
        ax.set_xlabel(f"{task} test prompts counted")
        ax.set_ylabel(f"cumulative {_reward_label(task)}")
        ax.legend(loc="best")
    fig.tight_layout()
    style.save(fig, out, dpi)


def lora_training(runs: Mapping[str, str | Path], out: Outs, dpi: int = 120, smooth: int = 1) -> None:
    """Mean training reward per iteration of each compared run (run.jsonl), one panel per trained task.

    `smooth`: trailing moving-average window in iterations (1 = raw)."""
    by_task = {trained.split("-", 1)[1]: methods for trained, methods in _runs_by_training(runs).items()}
    fig, axes = plt.subplots(1, len(by_task), squeeze=False,
                             figsize=style.figsize(max(1.0, 0.8 * len(by_task)), 2.4))
    for ax, (task, methods) in zip(axes[0], by_task.items()):
        for method, records in methods.items():
            reward = _smoothed(records, "reward_mean", smooth)
            ax.plot([r["iteration"] + 1 for r in records], reward, color=style.method_color(method), label=method)
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"training {_reward_label(task)}\n(population mean)")
        ax.set_title(task)
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
        for method, points in on_task.groupby("method", sort=False):
            points = points.sort_values("iteration")
            for row, x in enumerate(("seconds", "tokens")):
                axes[row][col].plot(points[x], points["accuracy"], color=style.method_color(method), marker="o",
                                    label=method)
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
