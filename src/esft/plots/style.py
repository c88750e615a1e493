"""One look for every figure: a colour per method (the same in every figure) and rcParams sized for a
paper column (3.4 in wide, 8 pt text), applied once on import of esft.plots.figures."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from esft.io import atomic_path  # noqa: E402

COLUMN_WIDTH = 3.4
"""Inches: one column of a two-column paper; wide figures use 2x."""

METHOD_COLORS = {"base": "#555555", "es": "#0072B2", "grpo": "#D55E00", "lbes": "#009E73", "adamw": "#CC79A7",
                 "random": "#999999"}
"""Okabe-Ito colours, distinguishable with colour-vision deficiencies; random directions are grey."""

VARIANT_COLORS = {"es_lora": "#56B4E9", "es_300": "#CC79A7"}
"""Named variants of the shipped configs (KIND_LABEL): es_lora a lighter blue beside es, so the ES-with-LoRA
figures read as full-parameter vs LoRA ES; es_300 (Table 1's ES-300) reddish purple."""

_EXTRA = ["#882255", "#E69F00", "#56B4E9", "#F0E442", "#000000"]

RC = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7,
    "ytick.labelsize": 7, "lines.linewidth": 1.2, "lines.markersize": 3.5, "axes.grid": True, "grid.alpha": 0.3,
    "axes.spines.top": False, "axes.spines.right": False, "savefig.bbox": "tight", "pdf.fonttype": 42,
}


def apply() -> None:
    plt.rcParams.update(RC)


def method_color(method: str) -> str:
    """The method's colour; a method without one gets a fixed colour from its name (stable across figures)."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    if method in VARIANT_COLORS:
        return VARIANT_COLORS[method]
    return _EXTRA[sum(method.encode()) % len(_EXTRA)]


def figsize(columns: float = 1.0, height: float = 2.4) -> tuple[float, float]:
    return COLUMN_WIDTH * columns, height


def save(fig, outs: list[str | Path] | str | Path, dpi: int) -> None:
    """Write the figure to every path in `outs`, the format from each suffix (png, pdf), atomically."""
    for out in [outs] if isinstance(outs, (str, Path)) else outs:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=dpi, format=Path(out).suffix.lstrip("."))
    plt.close(fig)
