"""Geometry stages on hand-made weights and tables with known answers, and population evaluation of
weight variants against one-at-a-time evaluation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from esft.geometry.deltas import compare_deltas
from esft.geometry.drift import fit_run, fit_through_origin, param_kind, summarize_kinds, theory_applies
from esft.geometry.interpolation import barrier, barriers, interpolation_variants
from esft.geometry.probes import probe_variants, random_directions
from esft.evaluate.accuracy import evaluate_tasks
from esft.geometry.variants import (Variant, base_weights, evaluate_variants, load_delta, map_variants, norm,
                                   variant_weights)

NAMES = ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight")


def _save(path, weights):
    save_file({n: t.contiguous() for n, t in weights.items()}, str(path))
    return path


def test_orthogonal_deltas_have_zero_cosine_and_their_norm_ratio(tmp_path):
    theta0 = {NAMES[0]: torch.ones(2, 2), NAMES[1]: torch.zeros(3)}
    a = _save(tmp_path / "a.safetensors", {NAMES[0]: torch.ones(2, 2) + torch.tensor([[3.0, 0], [0, 0]]),
                                           NAMES[1]: torch.tensor([0.0, 4.0, 0.0])})
    b = _save(tmp_path / "b.safetensors", {NAMES[0]: torch.ones(2, 2) + torch.tensor([[0, 0.5], [0, 0]]),
                                           NAMES[1]: torch.tensor([0.0, 0.0, 0.0])})
    row = compare_deltas(theta0, {"sequential/2-math": (a, b)}, ("es", "grpo")).iloc[0]
    assert (row["schedule"], row["stage"], row["task"]) == ("sequential", 2, "math")
    assert row["norm_es"] == pytest.approx(5.0) and row["norm_grpo"] == pytest.approx(0.5)
    assert row["ratio"] == pytest.approx(10.0)
    assert row["cosine"] == pytest.approx(0.0, abs=1e-12)
    same = compare_deltas(theta0, {"single/1-math": (a, a)}, ("es", "grpo")).iloc[0]
    assert same["cosine"] == pytest.approx(1.0) and same["ratio"] == pytest.approx(1.0)


def test_interpolation_endpoints_are_the_checkpoints_and_the_path_is_linear(tmp_path):
    gen = torch.Generator().manual_seed(0)
    theta0 = {n: torch.randn(3, 4, generator=gen) for n in NAMES}
    ckpt = {m: {n: torch.randn(3, 4, generator=gen) for n in NAMES} for m in ("a", "b")}
    directions = {m: load_delta(theta0, _save(tmp_path / f"{m}.safetensors", w)) for m, w in ckpt.items()}
    grid = [0.0, 0.25, 0.5, 1.0]
    variants = interpolation_variants(grid)
    for name in NAMES:
        at = [variant_weights(theta0, directions, v, name) for v in variants]
        torch.testing.assert_close(at[0], ckpt["a"][name])
        torch.testing.assert_close(at[-1], ckpt["b"][name])
        for lam, w in zip(grid, at):
            torch.testing.assert_close(w, (1 - lam) * ckpt["a"][name] + lam * ckpt["b"][name])


def test_barrier_is_the_largest_drop_below_the_endpoints_line():
    path = pd.DataFrame({"lambda": [0, 0.25, 0.5, 0.75, 1], "accuracy": [0.8, 0.7, 0.3, 0.6, 0.4]})
    assert barrier(path) == pytest.approx(0.6 - 0.3)  # the line is 0.6 at λ = 0.5
    assert barrier(path.assign(accuracy=[0.8, 0.75, 0.7, 0.65, 0.6])) == pytest.approx(0.0)
    assert barrier(path.assign(accuracy=[0.4, 0.9, 0.9, 0.9, 0.4])) == 0.0  # above the line: no barrier
    table = pd.DataFrame([{"schedule": "sequential", "stage": 1, "trained_task": "math", "lambda": lam, "task": task,
                           "accuracy": acc} for lam, accs in [(0, (1.0, 0.0)), (0.5, (0.0, 0.0)), (1, (1.0, 0.0))]
                          for task, acc in zip(("math", "boolq"), accs)])
    assert barriers(table)["barrier"].tolist() == pytest.approx([0.5])  # mean 0.5, 0, 0.5


def test_probe_distances_are_in_units_of_each_methods_own_norm():
    theta0 = {n: torch.zeros(10, 10) for n in NAMES}
    es = {n: torch.full((10, 10), 0.3) for n in NAMES}
    grpo = {n: torch.full((10, 10), 0.01) for n in NAMES}
    randoms = random_directions(theta0, 2, seed=5)
    directions = {"es": es, "grpo": grpo, **randoms}
    variants = probe_variants(directions, ["es", "grpo"], list(randoms), [0.0, 1.0, 2.0])
    assert len(variants) == 2 * 3 * 3
    for v in variants:
        ref, d, s = v.key["reference"], v.key["direction"], v.key["scale"]
        moved = {n: variant_weights(theta0, directions, v, n) for n in NAMES}
        assert norm(moved) == pytest.approx(s * norm(directions[ref]), rel=1e-5)
        if d == ref and s == 1.0:  # the checkpoint itself
            for n in NAMES:
                torch.testing.assert_close(moved[n], directions[ref][n])
    # seeded: the same direction whenever drawn, different per index
    again = random_directions(theta0, 2, seed=5)
    torch.testing.assert_close(again["random1"][NAMES[0]], randoms["random1"][NAMES[0]])
    assert not torch.equal(randoms["random1"][NAMES[0]], randoms["random2"][NAMES[0]])
    cos = float((randoms["random1"][NAMES[0]] * es[NAMES[0]]).sum()) / (norm(randoms["random1"]) * norm(es))
    assert abs(cos) < 0.3


def test_absolute_probe_axis_shares_distances_across_methods_and_random_directions():
    """Issue 17, defect 6: the paper's Figure 4 moves θ₀ + c·Δ/‖Δ‖ at absolute magnitudes c, one axis for
    ES, GRPO and the random directions; each method's checkpoint (s = 1) stays measured for the findings."""
    from esft.geometry.variants import _unique

    theta0 = {n: torch.zeros(10, 10) for n in NAMES}
    directions = {"es": {n: torch.full((10, 10), 0.3) for n in NAMES},
                  "grpo": {n: torch.full((10, 10), 0.01) for n in NAMES}, **random_directions(theta0, 2, seed=5)}
    norms = {m: norm(directions[m]) for m in ("es", "grpo")}  # 4.24 and 0.141
    scales = [0, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10]
    variants = probe_variants(directions, ["es", "grpo"], ["random1", "random2"], scales, axis="absolute")
    by_ref = {}
    for v in variants:
        key = v.key
        assert key["axis"] == "absolute"
        by_ref.setdefault((key["reference"], key["direction"]), []).append((key["distance"], key["scale"]))
        moved = {n: variant_weights(theta0, directions, v, n) for n in NAMES}
        assert norm(moved) == pytest.approx(key["distance"], rel=1e-5, abs=1e-9)
    for ref in ("es", "grpo"):
        for d in (ref, "random1", "random2"):
            points = by_ref[(ref, d)]
            assert [c for c, _ in points] == sorted([*map(float, scales), norms[ref]])
            assert [s for c, s in points if c == norms[ref]] == [1.0]  # the checkpoint, as the findings read it
            assert all(s == pytest.approx(c / norms[ref]) for c, s in points)
    # the random probes at a shared c are one variant for both methods: θ₀ once, 2 own + 2 random per c > 0,
    # and each method's checkpoint distance along its own and the random directions
    unique, _ = _unique(variants)
    assert len(unique) == 1 + (2 + 2) * (len(scales) - 1) + 2 * (1 + 2)
    relative = probe_variants(directions, ["es", "grpo"], ["random1", "random2"], [0.0, 1.0, 2.0])
    assert {v.key["axis"] for v in relative} == {"relative"} and len(relative) == 2 * 3 * 3


def _es_records(n_steps: int, alpha: float = 0.01, population: int = 8, **config) -> list[dict]:
    cfg = {"shaping": "zscore", "step": "standard", "antithetic": "none", "mode": "inplace", "lora": None, **config}
    return [{"iteration": t, "alpha": alpha, "population": population, "config": cfg} for t in range(n_steps)]


def test_drift_fit_recovers_a_known_slope_and_the_theory_line():
    alpha, n, steps = 0.01, 8, 20
    sizes = {NAMES[0]: 400, NAMES[1]: 100, "model.norm.weight": 10}
    unit = {p: alpha ** 2 * d / n for p, d in sizes.items()}
    # q/k/v/o at exactly the theory (D_eff/D = 1), MLP at half, the norm gain with a little noise
    slope = {NAMES[0]: unit[NAMES[0]], NAMES[1]: 0.5 * unit[NAMES[1]], "model.norm.weight": 0.1 * unit["model.norm.weight"]}
    noise = np.random.default_rng(0).normal(0, 1e-9, steps)
    drift = pd.DataFrame([{"iteration": t, "parameter": p, "drift_sq": s * (t + 1) + (noise[t] if "norm" in p else 0.0)}
                          for t in range(steps) for p, s in slope.items()])
    series, summary, params = fit_run("es/sequential/1-math", drift, _es_records(steps, alpha, n), sizes)
    by = params.set_index("parameter")
    assert by.loc[NAMES[0], "deff_ratio"] == pytest.approx(1.0)
    assert by.loc[NAMES[1], "deff_ratio"] == pytest.approx(0.5)
    assert by.loc[NAMES[0], "r2"] == pytest.approx(1.0)
    assert by.loc["model.norm.weight", "kind"] == "final norm"
    assert summary["theory"] == "yes" and summary["parameters"] == 510
    assert summary["theory_slope"] == pytest.approx(alpha ** 2 * 510 / n)
    assert summary["slope"] == pytest.approx(sum(slope.values()), rel=1e-6)
    assert series["theory_sq"].tolist() == pytest.approx([alpha ** 2 * 510 / n * (t + 1) for t in range(steps)])
    kinds = summarize_kinds(params).set_index("kind")
    assert kinds.loc["gate/up/down", "deff_ratio_median"] == pytest.approx(0.5)
    # Appendix C (Fig. 10) reports the large matrices and the norm weights apart
    assert by["group"].to_dict() == {NAMES[0]: "large matrices", NAMES[1]: "large matrices",
                                     "model.norm.weight": "norm weights"}
    assert kinds.loc["final norm", "group"] == "norm weights" and kinds.loc["q/k/v/o", "r2_min"] == pytest.approx(1.0)


def test_drift_of_a_method_without_es_step_has_no_theory():
    drift = pd.DataFrame([{"iteration": t, "parameter": NAMES[0], "drift_sq": 2.0 * (t + 1)} for t in range(5)])
    records = [{"iteration": t} for t in range(5)]
    series, summary, params = fit_run("grpo/single/1-math", drift, records, {NAMES[0]: 4})
    assert summary["slope"] == pytest.approx(2.0) and math.isnan(summary["theory_slope"])
    assert series["theory_sq"].isna().all() and math.isnan(params["deff_ratio"].iloc[0])
    assert theory_applies(_es_records(1, antithetic="signed")) == "not for antithetic signed"


def test_fit_through_origin_with_a_decaying_step_uses_effective_steps():
    records = _es_records(4)
    for t, r in enumerate(records):
        r["alpha"] = 0.01 * 0.5 ** (t // 2)
    x = np.cumsum([r["alpha"] ** 2 for r in records]) / 0.01 ** 2
    drift = pd.DataFrame([{"iteration": t, "parameter": NAMES[0], "drift_sq": 3.0 * x[t]} for t in range(4)])
    series, summary, _ = fit_run("es/single/1-math", drift, records, {NAMES[0]: 4})
    assert series["effective_step"].tolist() == pytest.approx([1, 2, 2.25, 2.5])
    assert summary["slope"] == pytest.approx(3.0)
    assert fit_through_origin(np.array([1.0, 2.0]), np.array([2.0, 4.0])) == pytest.approx((2.0, 1.0))


@pytest.mark.parametrize(("name", "kind"), [
    ("model.embed_tokens.weight", "embedding"), ("model.layers.1.self_attn.k_proj.weight", "q/k/v/o"),
    ("model.layers.1.mlp.down_proj.weight", "gate/up/down"), ("model.layers.1.input_layernorm.weight", "layer norms"),
    ("model.layers.1.self_attn.q_norm.weight", "q_norm/k_norm"), ("model.norm.weight", "final norm"),
    ("lm_head.weight", "lm_head"), ("model.layers.0.self_attn.q_proj.bias", "bias"),
])
def test_parameter_kinds(name, kind):
    assert param_kind(name) == kind


@pytest.fixture()
def task_data(tmp_path):
    from esft.tasks.prepare import prepare_task

    cfgs = {"boolq": {"source": "synthetic", "seed": 3, "n_train": 2, "n_test": 5, "max_new_tokens": 6},
            "conciseness": {"source": "embedded", "n_train": 2, "n_test": 4, "max_new_tokens": 8}}
    for task, cfg in cfgs.items():
        prepare_task(task, cfg, tmp_path / task)
    return {t: tmp_path / t for t in cfgs}, cfgs


def test_population_evaluation_equals_one_at_a_time(tiny_model, tokenizer, task_data):
    data, cfgs = task_data
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tiny_model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3, generator=gen)
    theta0 = base_weights(tiny_model)
    directions = {"d": {n: torch.randn(t.shape, generator=gen) * 0.2 for n, t in theta0.items()},
                  "e": {n: torch.randn(t.shape, generator=gen) * 0.2 for n, t in theta0.items()}}
    variants = [Variant({"i": 0}), Variant({"i": 1}, {"d": 1.0}), Variant({"i": 2}, {"d": 0.5, "e": 1.0}),
                Variant({"i": 3}, {"e": -1.0}), Variant({"i": 4}, {"d": 0.0})]
    together = evaluate_variants(tiny_model, tokenizer, theta0, directions, variants, data, cfgs, batch_size=3,
                                 variants_per_pass=4)
    for name, p in tiny_model.named_parameters():  # θ₀ restored
        torch.testing.assert_close(p.detach(), theta0[name])
    alone = evaluate_variants(tiny_model, tokenizer, theta0, directions, variants, data, cfgs, batch_size=3,
                              variants_per_pass=1)
    for t, a in zip(together, alone):
        for task in data:
            assert t[task].texts == a[task].texts
            assert t[task].accuracy == a[task].accuracy
    assert together[0]["conciseness"].texts != together[1]["conciseness"].texts  # variants do differ
    metrics, completions = evaluate_tasks(tiny_model, tokenizer, data, cfgs, 3)  # θ₀ itself, no variant machinery
    for scores in (together[0], together[4]):  # θ₀, and {"d": 0.0}: evaluated once and copied
        for task in data:
            assert scores[task].texts == [c["completion"] for c in completions if c["task"] == task]
            assert scores[task].accuracy == metrics[task]["accuracy"]


def test_each_distinct_weights_are_evaluated_once_and_theta0_is_restored():
    """Variants with the same weights (any direction at scale 0 is θ₀) run once and share that result; each
    run sees its variant's weights, θ₀ + Σ c·d computed here; the model is back at θ₀ afterwards. A wrong
    representative, a dedup by key rather than weights, a zero coefficient applied, or no restore fail."""
    model = torch.nn.Linear(3, 2)
    theta0 = base_weights(model)
    gen = torch.Generator().manual_seed(0)
    directions = {d: {n: torch.randn(t.shape, generator=gen) for n, t in theta0.items()} for d in "de"}
    coefs = [{"d": 0.0}, {"d": 1.0}, {}, {"e": 0.0, "d": 1.0}, {"e": -0.5}, {"d": 0.0, "e": 0.0}]
    seen = []

    def evaluate(_):
        seen.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return len(seen) - 1

    runs = map_variants(model, theta0, directions, [Variant({"i": i}, c) for i, c in enumerate(coefs)], evaluate)
    assert runs == [0, 1, 0, 1, 2, 0] and len(seen) == 3
    for c, run in zip(coefs, runs):
        for n, t in theta0.items():
            torch.testing.assert_close(seen[run][n], t + sum(k * directions[d][n] for d, k in c.items()))
    assert all(p.detach().equal(theta0[n]) for n, p in model.named_parameters())


def test_interpolation_and_probe_endpoints_score_the_checkpoints_themselves(base, tmp_path):
    """λ = 0/1 and s = 0/1 along a method's own direction give exactly the accuracy the evaluate stage's
    `evaluate_tasks` gives for that checkpoint's weights (s = 0: the base model), through the population
    decoder (interpolate) and the one-at-a-time path (probe). Swapped pair members, a λ/s label on the wrong
    variant or a direction not rebuilt from θ₀ fail: the three models score differently here."""
    import json

    from esft.cli import main
    from esft.models import load_model
    from esft.runs import save_weights
    from esft.tasks.prepare import prepare_task

    cfgs = {"conciseness": {"source": "embedded", "n_train": 2, "n_test": 8, "max_new_tokens": 8}}
    prepare_task("conciseness", cfgs["conciseness"], tmp_path / "conciseness")
    data = {"conciseness": tmp_path / "conciseness"}
    model, tokenizer = load_model(base / "base")
    gen = torch.Generator().manual_seed(1)
    ckpts = {m: tmp_path / f"{m}.safetensors" for m in ("es", "grpo")}
    for m, size in (("es", 0.3), ("grpo", 0.15)):
        save_weights(ckpts[m], {n: p.detach() + size * torch.randn(p.shape, generator=gen)
                                for n, p in model.named_parameters()})
    direct = {}
    for label, weights in (("base", None), *ckpts.items()):
        m, tok = load_model(base / "base", weights)
        direct[label] = evaluate_tasks(m, tok, data, cfgs, 4)[0]["conciseness"]["accuracy"]
    assert len(set(direct.values())) == 3, direct
    common = ["--base", str(base / "base"), "--methods", "es", "grpo", "--data", f"conciseness={data['conciseness']}",
              "--tasks-cfg", json.dumps(cfgs), "--pairs", f"single/1-conciseness={ckpts['es']},{ckpts['grpo']}"]
    main(["interpolate", *common, "--out", str(tmp_path / "interp.csv"),
          "--cfg", json.dumps({"grid": [0, 0.5, 1], "generation_batch_size": 4, "variants_per_pass": 3})])
    main(["probe", *common, "--out", str(tmp_path / "probes.csv"), "--cfg", json.dumps(
        {"scales": [0, 1], "random_directions": 1, "seed": 0, "generation_batch_size": 4, "variants_per_pass": 1})])
    # equal up to the csv's float parsing (pandas' default parser may round the last bit)
    same = lambda value: pytest.approx(value, rel=1e-12, abs=0)  # noqa: E731
    interp = pd.read_csv(tmp_path / "interp.csv").set_index("lambda")["accuracy"]
    assert (interp[0.0], interp[1.0]) == (same(direct["es"]), same(direct["grpo"]))
    probes = pd.read_csv(tmp_path / "probes.csv").set_index(["reference", "direction", "scale"])["accuracy"]
    assert probes[("es", "es", 1.0)] == same(direct["es"]) and probes[("grpo", "grpo", 1.0)] == same(direct["grpo"])
    at_zero = list(probes[probes.index.get_level_values("scale") == 0.0])
    assert at_zero and all(value == same(direct["base"]) for value in at_zero)
