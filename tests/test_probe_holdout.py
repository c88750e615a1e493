"""Holdout benchmarks along the probe directions (Figure 5): the finding's verdict and numbers on synthetic
tables with known answers, the figure, and `esft probe-holdout` on the micro model through lm-eval."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import findings_defaults
from esft.cli import main
from esft.geometry.probe_holdout import headline_changes, random_range_at
from esft.plots import figures, tables

PNG = b"\x89PNG\r\n\x1a\n"
FINDINGS = findings_defaults()
ROW = "es direction ~ random on holdouts (Figure 5)"


def _table(at1: dict[tuple[str, str], float], theta0: float = 0.5) -> pd.DataFrame:
    """A probes_holdout table of one pair: headline value θ₀ at s = 0, `at1[(benchmark, direction)]` at s = 1
    along reference es (grpo's rows and the non-headline metric at fixed values), s = 2 at 0."""
    rows = []
    for benchmark, metric in (("mmlu", "acc"), ("ifeval", "prompt_level_strict_acc")):
        for ref in ("es", "grpo"):
            for d in (ref, "random1", "random2", "random3"):
                for s in (0.0, 1.0, 2.0):
                    value = theta0 if s == 0 else at1[benchmark, d] if ref == "es" and s == 1 else 0.0
                    key = {"schedule": "sequential", "stage": 4, "trained_task": "boolq", "reference": ref,
                           "direction": d, "scale": s, "distance": s * (10.0 if ref == "es" else 0.1),
                           "benchmark": benchmark, "n": 32}
                    rows += [{**key, "metric": metric, "value": value},
                             {**key, "metric": "other", "value": 0.9}]
    return pd.DataFrame(rows)


# es at s = 1: mmlu −0.1 with randoms −0.2…0.0 (inside); ifeval +0.3 with randoms −0.1…+0.1 (0.2 outside)
KNOWN = {("mmlu", "es"): 0.4, ("mmlu", "random1"): 0.3, ("mmlu", "random2"): 0.5, ("mmlu", "random3"): 0.45,
         ("ifeval", "es"): 0.8, ("ifeval", "random1"): 0.4, ("ifeval", "random2"): 0.6, ("ifeval", "random3"): 0.5}


def test_change_at_the_checkpoint_against_the_random_range():
    changes = headline_changes(_table(KNOWN))
    assert set(changes["metric"]) == {"acc", "prompt_level_strict_acc"}  # headline metrics only
    assert (changes.loc[changes["scale"] == 0, "change"] == 0).all()
    ranges = random_range_at(_table(KNOWN), "es").set_index("benchmark")
    assert ranges.loc["mmlu", ["own", "random_min", "random_max", "outside"]].tolist() == pytest.approx(
        [-0.1, -0.2, 0.0, 0.0])
    assert ranges.loc["ifeval", ["own", "random_min", "random_max", "outside"]].tolist() == pytest.approx(
        [0.3, -0.1, 0.1, 0.2])
    assert ranges.loc["ifeval", "metric"] == "prompt_level_strict_acc"
    below = random_range_at(_table({**KNOWN, ("mmlu", "es"): 0.1}), "es").set_index("benchmark")
    assert below.loc["mmlu", "outside"] == pytest.approx(0.2)  # −0.4 against −0.2…0.0
    assert random_range_at(_table(KNOWN), "es", scale=0.5).empty  # no probe there: nothing to compare


def _verdict(table: pd.DataFrame, tolerance: float) -> pd.Series:
    df = tables.findings(["es", "grpo"], {**FINDINGS, "holdout_random_tolerance": tolerance}, probes_holdout=table)
    return df.set_index("finding").loc[ROW]


def test_holdout_finding_verdict_tolerance_and_numbers():
    row = _verdict(_table(KNOWN), 0.05)
    assert row["verdict"] == "does not hold"  # ifeval 0.2 outside the random range
    assert "ifeval prompt_level_strict_acc: es +0.300 vs random [-0.100, +0.100]" in row["measured"]
    assert "mmlu acc: es -0.100 vs random [-0.200, +0.000]" in row["measured"]
    assert row["measured"].endswith("max outside 0.2") and "0.05" in row["threshold"]
    assert _verdict(_table(KNOWN), 0.25)["verdict"] == "holds"
    inside = {**KNOWN, ("ifeval", "es"): 0.55}
    assert _verdict(_table(inside), 0.0)["verdict"] == "holds"
    absent = tables.findings(["es", "grpo"], FINDINGS).set_index("finding").loc[ROW]
    assert absent["verdict"] == "not measured" and absent["measured"] == ""


def test_probes_holdout_figure_writes_png_and_pdf(tmp_path):
    outs = [tmp_path / "f.png", tmp_path / "f.pdf"]
    for band in (False, True):
        figures.probes_holdout(_table(KNOWN), outs, 50, random_band=band)
        assert outs[0].read_bytes()[:8] == PNG and outs[1].read_bytes()[:5] == b"%PDF-"


def test_probe_holdout_stage_on_the_micro_model(tmp_path, base, nltk_data):
    """Rows for every probe, benchmark and metric; θ₀ (s = 0) measured although not asked for, on every
    direction scoring what the holdout stage scores for the base model; the probe at s = 1 along es's direction
    scores what the holdout stage scores for es's checkpoint. A scale-0 row taken from another variant, or a
    probe that leaves the model off θ₀ or off the checkpoint, fails."""
    import torch

    from esft.models import load_model
    from esft.runs import save_weights

    model, _ = load_model(base / "base")
    gen = torch.Generator().manual_seed(0)
    ckpts = {}
    for method, size in (("es", 0.05), ("grpo", 0.01)):
        ckpts[method] = tmp_path / f"{method}.safetensors"
        save_weights(ckpts[method], {n: p.detach() + size * torch.randn(p.shape, generator=gen)
                                     for n, p in model.named_parameters()})
    cfgs = {"mmlu": {"source": "synthetic", "n": 4, "seed": 1, "prompt_style": "short", "max_new_tokens": 6},
            "ifeval": {"source": "synthetic", "n": 3, "seed": 2, "max_new_tokens": 6}}
    for bench, cfg in cfgs.items():
        main(["holdout-data", "--benchmark", bench, "--cfg", json.dumps(cfg), "--out", str(tmp_path / f"{bench}.jsonl")])
    data = [f"{b}={tmp_path / b}.jsonl" for b in cfgs]
    out = tmp_path / "probes_holdout.csv"
    main(["probe-holdout", "--base", str(base / "base"), "--methods", "es", "grpo",
          "--pairs", f"sequential/2-boolq={ckpts['es']},{ckpts['grpo']}",
          "--cfg", json.dumps({"scales": [1], "random_directions": 2, "seed": 0}),
          "--holdout-cfg", json.dumps({"batch_size": 4, "benchmarks": cfgs}), "--data", *data,
          "--nltk-data", str(nltk_data), "--out", str(out)])
    df = pd.read_csv(out)
    assert list(df.columns) == ["seed", "schedule", "stage", "trained_task", "reference", "direction", "scale", "distance",
                                "axis", "benchmark", "metric", "value", "n"]
    metrics = {"mmlu": {"acc", "answered"}, "ifeval": {"prompt_level_strict_acc", "inst_level_strict_acc",
                                                       "prompt_level_loose_acc", "inst_level_loose_acc"}}
    assert {b: set(g["metric"]) for b, g in df.groupby("benchmark")} == metrics
    assert len(df) == 2 * 3 * 2 * 6  # references × (own + 2 random) × scales {0, 1} × metrics
    assert set(df["scale"]) == {0.0, 1.0} and set(df["direction"]) == {"es", "grpo", "random1", "random2"}
    assert (df[["schedule", "stage", "trained_task"]].drop_duplicates().values.tolist()
            == [["sequential", 2, "boolq"]])
    assert df[df["benchmark"] == "mmlu"]["n"].eq(4).all() and df[df["benchmark"] == "ifeval"]["n"].eq(3).all()
    for bench, cfg in cfgs.items():
        scored = {}
        for name, weights in (("theta0", []), ("es", ["--weights", str(ckpts["es"])])):
            record = tmp_path / f"{bench}-{name}.json"
            main(["holdout", "--base", str(base / "base"), *weights, "--benchmark", bench, "--cfg", json.dumps(cfg),
                  "--data", f"{tmp_path / bench}.jsonl", "--nltk-data", str(nltk_data), "--batch-size", "4",
                  "--out", str(record)])
            scored[name] = {m: v for m, v in json.loads(record.read_text())["metrics"].items()
                            if not m.endswith("_stderr")}
        at = df[df["benchmark"] == bench]
        for _, probe in at[at["scale"] == 0].groupby(["reference", "direction"]):
            assert probe.set_index("metric")["value"].to_dict() == pytest.approx(scored["theta0"])
        at1 = at[(at["reference"] == "es") & (at["direction"] == "es") & (at["scale"] == 1)]
        assert at1.set_index("metric")["value"].to_dict() == pytest.approx(scored["es"])
