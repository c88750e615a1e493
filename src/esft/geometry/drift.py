"""Random-walk drift: ||θ_t − θ₀||² against step, fitted and set against Proposition 1 (Figure 6).

On a flat landscape z-scored ES (population std, denominator N, so Σzᵢ² = N) is a pure random walk:
E||θ_T − θ₀||² = Σ_t α_t²·D/N, i.e. T·α²·D/N at constant α. More exactly, an iteration with shaped
weights wᵢ adds α_t²·D·(Σwᵢ²/N)/N in expectation: Σwᵢ²/N is 1 for z-scores, but 0 when every member ties
(a task the population cannot yet solve: no step at all). Each series is fitted through the origin
against the effective step x_t = Σ_{s≤t} (α_s²/α₀²)·(Σᵢwᵢ²/N) (the step count itself at constant α
without ties, and for methods without an α in their log), so slope·N/(α₀²·D) is the effective dimension
ratio D_eff/D: 1 where the parameter's updates are isotropic random-walk steps, lower where they cancel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from esft.labels import split_seed
from esft.params import param_group

KINDS = ("embedding", "q/k/v/o", "gate/up/down", "layer norms", "q_norm/k_norm", "final norm", "lm_head",
         "bias")
"""Parameter kinds of the paper's appendix C.1 summary (Qwen3, Qwen2 and Llama names)."""


GROUPS = {"embedding": "large matrices", "q/k/v/o": "large matrices", "gate/up/down": "large matrices",
          "lm_head": "large matrices", "layer norms": "norm weights", "q_norm/k_norm": "norm weights",
          "final norm": "norm weights", "bias": "bias"}
"""The paper's two groups of per-parameter fits (Appendix C, Fig. 10): the large weight matrices, whose
drift follows the isotropic random walk, and the norm weights, which do not (biases, absent in Qwen3,
apart)."""


def param_kind(name: str) -> str:
    if name.endswith(".bias"):
        return "bias"
    if "embed_tokens" in name:
        return "embedding"
    if name.startswith("lm_head"):
        return "lm_head"
    if "q_norm" in name or "k_norm" in name:
        return "q_norm/k_norm"
    if name == "model.norm.weight":
        return "final norm"
    if "norm" in name:
        return "layer norms"
    if ".self_attn." in name:
        return "q/k/v/o"
    if ".mlp." in name:
        return "gate/up/down"
    raise ValueError(f"cannot tell the kind of parameter {name!r}")


def fit_through_origin(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, R²) of y ≈ slope·x; R² = 1 − SS_res/SS_tot with SS_tot about the mean of y (NaN if y is flat)."""
    slope = float(x @ y / (x @ x))
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - slope * x) ** 2).sum()) / ss_tot if ss_tot > 0 else math.nan
    return slope, r2


def late_early_rate(x: np.ndarray, y: np.ndarray) -> float:
    """Drift rate over the second half of a run over that of the first half (Δy/Δx): about 1 for a random walk
    at a constant rate (ES), below 1 for drift that slows down (GRPO under a decaying learning rate)."""
    half = len(x) // 2
    if half < 1 or x[half - 1] <= 0 or y[half - 1] <= 0 or x[-1] <= x[half - 1]:
        return math.nan
    return float(((y[-1] - y[half - 1]) / (x[-1] - x[half - 1])) / (y[half - 1] / x[half - 1]))


def shaping_mass(records: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Σᵢwᵢ²/N of each iteration's shaped weights (1 for z-scores; 0 when the members tie), or 1 where the
    log has none."""
    return np.array([float(np.mean(np.square(r["shaped"]))) if r.get("shaped") else 1.0 for r in records])


def theory_applies(records: Sequence[Mapping[str, Any]]) -> str:
    """'yes', or why Proposition 1 does not give this run's expected drift."""
    if not records or "alpha" not in records[0] or "population" not in records[0]:
        return "no ES step size in the run log"
    cfg = records[0].get("config", {})
    reasons = [f"{key} {cfg.get(key)}" for key, ok in (("shaping", "zscore"), ("step", "standard"),
                                                        ("antithetic", "none")) if cfg.get(key, ok) != ok]
    if cfg.get("mode") == "lowrank":
        reasons.append("mode lowrank")
    if cfg.get("lora"):
        reasons.append("LoRA")
    return "yes" if not reasons else "not for " + ", ".join(reasons)


def fit_run(label: str, drift: pd.DataFrame, records: Sequence[Mapping[str, Any]],
            sizes: Mapping[str, int]) -> tuple[pd.DataFrame, dict[str, Any], pd.DataFrame]:
    """(total series, run summary, per-parameter fits) of one run.

    `drift`: the run's drift.parquet; `records`: its run.jsonl; `sizes`: numel per parameter name
    (parameters of the drift table missing from it get no D_eff).
    """
    theory = theory_applies(records)
    seed = split_seed(label)[0]
    steps = np.arange(1, len(records) + 1, dtype=float)
    if theory == "yes":
        alphas = np.array([r["alpha"] for r in records], dtype=float)
        x = np.cumsum(alphas ** 2 * shaping_mass(records)) / alphas[0] ** 2
        alpha0, n = float(alphas[0]), int(records[0]["population"])
        group_alpha = records[0].get("config", {}).get("group_alpha") or {}
    else:
        x, alpha0, n, group_alpha = steps, math.nan, None, {}
    wide = drift.pivot_table(index="iteration", columns="parameter", values="drift_sq").sort_index()
    wide = wide.reindex(range(len(records)))
    total = wide.sum(axis=1).to_numpy()
    params = []
    theory_slope = 0.0
    for name in wide.columns:
        y = wide[name].to_numpy()
        slope, r2 = fit_through_origin(x, y)
        size = sizes.get(name)
        mult = group_alpha.get(param_group(name), 1.0) if group_alpha else 1.0
        unit = alpha0 ** 2 * mult ** 2 * size / n if theory == "yes" and size else math.nan
        theory_slope += unit
        kind = param_kind(name)
        params.append({"run": label, "seed": seed, "parameter": name, "kind": kind, "group": GROUPS[kind], "numel": size,
                       "slope": slope, "r2": r2, "deff_ratio": slope / unit if unit else math.nan})
    slope, r2 = fit_through_origin(x, total)
    rate_ratio = late_early_rate(x, total)
    if theory != "yes" or not theory_slope or math.isnan(theory_slope):
        theory_slope = math.nan
    series = pd.DataFrame({"run": label, "seed": seed, "iteration": range(len(records)), "step": steps, "effective_step": x,
                           "drift_sq": total, "theory_sq": theory_slope * x})
    summary = {"run": label, "seed": seed, "theory": theory, "parameters": int(sum(sizes.get(p, 0) for p in wide.columns)),
               "population": n, "alpha": alpha0, "steps": len(records), "slope": slope,
               "theory_slope": theory_slope, "slope_ratio": slope / theory_slope, "r2": r2,
               "rate_ratio": rate_ratio}
    return series, summary, pd.DataFrame(params)


def summarize_kinds(params: pd.DataFrame) -> pd.DataFrame:
    """Per run and parameter kind (with the kind's group): parameter count and median/min/max of D_eff/D and
    R²."""
    agg = params.groupby(["run", "group", "kind"]).agg(
        tensors=("parameter", "size"), numel=("numel", "sum"), deff_ratio_median=("deff_ratio", "median"),
        deff_ratio_min=("deff_ratio", "min"), deff_ratio_max=("deff_ratio", "max"), r2_median=("r2", "median"),
        r2_min=("r2", "min"))
    return agg.reset_index()
