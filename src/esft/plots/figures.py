"""Matplotlib figures: accuracy and KL after each sequential stage, and training reward per step of any method."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from esft.io import atomic_path, read_jsonl  # noqa: E402


def _save(fig, outs: str | Path | list[str | Path], dpi: int) -> None:
    """Write the figure to each path in the format its suffix names (png, pdf, ...)."""
    for out in [outs] if isinstance(outs, (str, Path)) else outs:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(out).suffix.lstrip("."))
    plt.close(fig)


def accuracy_sequential(acc: pd.DataFrame, out: str | Path, dpi: int = 120) -> None:
    """Figure 1: accuracy on every task (lines) after each sequential stage (x), one panel per method."""
    seq = acc[acc["schedule"] == "sequential"]
    methods = sorted(seq["method"].dropna().unique())
    if not methods:
        raise ValueError("no sequential checkpoints in the accuracy table")
    base = acc[acc["checkpoint"] == "base"]
    fig, axes = plt.subplots(1, len(methods), figsize=(5.5 * len(methods), 4), squeeze=False)
    for ax, method in zip(axes[0], methods):
        rows = pd.concat([base, seq[seq["method"] == method]])
        stages = rows.drop_duplicates("stage").sort_values("stage")
        labels = ["base" if s == 0 else f"{s}: {t}" for s, t in zip(stages["stage"], stages["trained_task"])]
        for task, group in rows.groupby("eval_task"):
            group = group.sort_values("stage")
            ax.plot(group["stage"], group["accuracy"], marker="o", label=task)
        ax.set_xticks(list(stages["stage"]), labels, rotation=20)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("after training stage")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{method}: sequential training")
        ax.grid(alpha=0.3)
        ax.legend(title="evaluated on", fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    _save(fig, out, dpi)


def kl_sequential(kl: pd.DataFrame, outs: list[str | Path], dpi: int = 120) -> None:
    """Figure 2: KL heatmaps of sequential training, one column of panels per method: KL(π_{k−1} ‖ π_k)
    (top) and KL(π_0 ‖ π_k) (bottom), rows = training stage k, columns = evaluated task."""
    seq = kl[kl["schedule"] == "sequential"]
    methods = sorted(seq["method"].unique())
    if not methods:
        raise ValueError("no sequential checkpoints in the KL table")
    references = {"previous": r"$\mathrm{KL}(\pi_{k-1} \,\Vert\, \pi_k)$", "base": r"$\mathrm{KL}(\pi_0 \,\Vert\, \pi_k)$"}
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
    _save(fig, outs, dpi)


def training_fitness(runs: dict[str, str | Path], out: str | Path, dpi: int = 120) -> None:
    """Mean training reward per step (the common run.jsonl field of every method), and the best ES
    member where the run logs one; one panel per training run."""
    n = len(runs)
    cols = min(n, 3)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(4.5 * cols, 3.2 * math.ceil(n / cols)),
                             squeeze=False)
    for ax, (label, path) in zip(axes.flat, runs.items()):
        records = read_jsonl(path)
        it = [r["iteration"] + 1 for r in records]
        ax.plot(it, [r["reward_mean"] for r in records], label="mean reward")
        if records and "fitness_max" in records[0]:
            ax.plot(it, [r["fitness_max"] for r in records], alpha=0.6, label="best ES member")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step (iteration or optimizer step)")
        ax.set_ylabel("training reward")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    for ax in list(axes.flat)[:n]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out, dpi)
