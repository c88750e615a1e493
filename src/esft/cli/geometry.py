"""`esft` commands of the geometry stage: update norms, the two methods' deltas, interpolation between
them, probes along their directions (tasks and holdouts), and drift fits."""

from __future__ import annotations

import math
from pathlib import Path

from esft.cli.args import (MODEL, NLTK_DATA, Stage, arg, cfg, config_slice, group, labelled_paths, task_data,
                           task_data_args)

stage = Stage()

PAIRS = group(
    MODEL,
    arg("--methods", nargs=2, required=True, help="the two methods compared, a and b"),
    arg("--pairs", nargs="+", required=True,
        help="LABEL=WEIGHTS_A,WEIGHTS_B ... (LABEL: schedule/k-task, checkpoints of a and b)"),
    arg("--out", required=True),
)
"""The pair stages' model, methods, checkpoint pairs and output."""

GENERATION = ("geometry:generation_batch_size", "geometry:variants_per_pass")
"""The evaluation settings both pair stages' slices share (the rules' geometry_cfg)."""


def _geometry_inputs(args):
    """(model, tokenizer, θ₀, {label: (Δ_a, Δ_b)} loaded lazily, pair paths) for the pair stages."""
    from esft.geometry.variants import base_weights
    from esft.models import load_model

    model, tokenizer = load_model(args.base, dtype=args.dtype, device=args.device)
    pairs = {label: tuple(paths.split(",")) for label, paths in labelled_paths(args.pairs).items()}
    if any(len(p) != 2 for p in pairs.values()):
        raise SystemExit("esft: --pairs takes LABEL=WEIGHTS_A,WEIGHTS_B")
    return model, tokenizer, base_weights(model), pairs


@stage.command("norms", "update norms ||θ − θ₀|| of checkpoints", [
    arg("--base", required=True),
    arg("--checkpoints", nargs="+", required=True, help="LABEL=weights.safetensors ..."),
    arg("--out", required=True),
])
def cmd_norms(args) -> None:
    from esft.geometry.norms import update_norms
    from esft.io import write_csv
    from esft.models import load_model

    model, _ = load_model(args.base)
    theta0 = {n: p.detach() for n, p in model.named_parameters()}
    df = update_norms(theta0, labelled_paths(args.checkpoints))
    write_csv(args.out, df)


@stage.command("geometry-deltas", "norms, norm ratio and cosine of two methods' updates", [
    PAIRS,
])
def cmd_geometry_deltas(args) -> None:
    from esft.geometry.deltas import compare_deltas
    from esft.io import write_csv

    _, _, theta0, pairs = _geometry_inputs(args)
    df = compare_deltas(theta0, pairs, tuple(args.methods))
    write_csv(args.out, df)


@stage.command("interpolate", "accuracy along θ(λ) = (1−λ)θ_a + λθ_b at each checkpoint pair", [
    PAIRS,
    task_data_args("TASK=DATA_DIR ... (tasks evaluated)"),
    cfg(help="{grid, generation_batch_size, variants_per_pass}"),
])
def cmd_interpolate(args) -> None:
    import pandas as pd

    from esft.geometry.deltas import split_label
    from esft.geometry.interpolation import interpolation_variants
    from esft.geometry.variants import evaluate_variants, load_delta
    from esft.io import write_csv
    from esft.labels import split_seed

    config_slice(args.cfg, "geometry.interpolation", *GENERATION, "geometry.interpolation")
    data = task_data(args)
    model, tokenizer, theta0, pairs = _geometry_inputs(args)
    variants = interpolation_variants(args.cfg["grid"])
    rows = []
    for label, (path_a, path_b) in pairs.items():
        schedule, stage, trained = split_label(label)
        directions = {"a": load_delta(theta0, path_a), "b": load_delta(theta0, path_b)}
        results = evaluate_variants(model, tokenizer, theta0, directions, variants, data, args.tasks_cfg,
                                    args.cfg["generation_batch_size"], args.cfg["variants_per_pass"])
        rows += [{"seed": split_seed(label)[0], "schedule": schedule, "stage": stage, "trained_task": trained,
                  "lambda": v.key["lambda"],
                  "task": task, "accuracy": score.accuracy}
                 for v, scores in zip(variants, results) for task, score in scores.items()]
    write_csv(args.out, pd.DataFrame(rows))


@stage.command("probe", "accuracy on the trained task along normalised update and random directions", [
    PAIRS,
    task_data_args("TASK=DATA_DIR ... (each pair's trained task)"),
    cfg(help="{scales, random_directions, seed, generation_batch_size, variants_per_pass}"),
])
def cmd_probe(args) -> None:
    import pandas as pd

    from esft.geometry.deltas import split_label
    from esft.geometry.probes import probe_variants, random_directions
    from esft.geometry.variants import evaluate_variants, load_delta
    from esft.io import write_csv
    from esft.labels import split_seed

    config_slice(args.cfg, "geometry.probes", *GENERATION, "geometry.probes")
    data = task_data(args)
    model, tokenizer, theta0, pairs = _geometry_inputs(args)
    randoms = random_directions(theta0, args.cfg["random_directions"], args.cfg["seed"])
    rows = []
    for label, paths in pairs.items():
        schedule, stage, trained = split_label(label)
        directions = {m: load_delta(theta0, p) for m, p in zip(args.methods, paths)}
        variants = probe_variants({**directions, **randoms}, args.methods, list(randoms), args.cfg["scales"],
                                  args.cfg.get("axis", "relative"))
        results = evaluate_variants(model, tokenizer, theta0, {**directions, **randoms}, variants,
                                    {trained: data[trained]}, args.tasks_cfg, args.cfg["generation_batch_size"],
                                    args.cfg["variants_per_pass"])
        rows += [{"seed": split_seed(label)[0], "schedule": schedule, "stage": stage, "trained_task": trained, **v.key,
                  "accuracy": scores[trained].accuracy} for v, scores in zip(variants, results)]
    write_csv(args.out, pd.DataFrame(rows))


@stage.command("probe-holdout", "holdout benchmarks (lm-eval) along normalised update and random "
               "directions, each probe's weights loaded into the model in memory", [
    PAIRS,
    cfg(help="{scales, random_directions, seed} (s = 0 is always added)"),
    cfg("--holdout-cfg", help="{batch_size, benchmarks}: the holdout slice"),
    arg("--data", nargs="*", default=[], help="BENCHMARK=ROWS ... of `esft holdout-data` (source synthetic)"),
    NLTK_DATA,
    arg("--tasks-dir", default=None, help="our lm-eval task YAMLs (default: this checkout's resources/lm_eval)"),
])
def cmd_probe_holdout(args) -> None:
    from esft.evaluate.punkt import use_nltk_data

    config_slice(args.cfg, "geometry.probes", "geometry.probes")
    config_slice(args.holdout_cfg, "holdout", "holdout:batch_size", "holdout:benchmarks", option="--holdout-cfg")
    # before lm-eval's IFEval modules are imported: their import tries to download punkt_tab otherwise
    if args.nltk_data:
        use_nltk_data(args.nltk_data)
    import pandas as pd

    from esft.geometry.deltas import split_label
    from esft.geometry.probe_holdout import holdout_rows
    from esft.geometry.probes import probe_variants, random_directions
    from esft.geometry.variants import load_delta
    from esft.io import write_csv
    from esft.labels import split_seed

    model, tokenizer, theta0, pairs = _geometry_inputs(args)
    randoms = random_directions(theta0, args.cfg["random_directions"], args.cfg["seed"])
    scales = sorted({0.0, *map(float, args.cfg["scales"])})  # θ₀ always: every change is measured from it
    data = {b: Path(p) for b, p in labelled_paths(args.data).items()}
    rows = []
    for label, paths in pairs.items():
        schedule, stage, trained = split_label(label)
        directions = {**{m: load_delta(theta0, p) for m, p in zip(args.methods, paths)}, **randoms}
        variants = probe_variants(directions, args.methods, list(randoms), scales, args.cfg.get("axis", "relative"))
        rows += [{"seed": split_seed(label)[0], "schedule": schedule, "stage": stage, "trained_task": trained, **row}
                 for row in holdout_rows(model, tokenizer, theta0, directions, variants,
                                         args.holdout_cfg["benchmarks"], data=data,
                                         tasks_dir=args.tasks_dir and Path(args.tasks_dir),
                                         batch_size=args.holdout_cfg["batch_size"])]
    write_csv(args.out, pd.DataFrame(rows))


@stage.command("drift", "fit ||θ_t − θ₀||² against step per run and parameter (Proposition 1)", [
    arg("--runs", nargs="+", required=True, help="LABEL=RUN_DIR ... (weights, run.jsonl, drift.parquet)"),
    arg("--series", required=True, help="csv: total drift and theory per step"),
    arg("--fits", required=True, help="csv: one fit per run"),
    arg("--params", required=True, help="csv: one fit per run and parameter"),
    arg("--kinds", required=True, help="csv: per-parameter fits summarised by kind"),
])
def cmd_drift(args) -> None:
    import pandas as pd

    from esft.geometry.drift import fit_run, summarize_kinds
    from esft.io import open_weights, read_jsonl, read_parquet, write_csv

    series, fits, params = [], [], []
    for label, run_dir in labelled_paths(args.runs).items():
        run_dir = Path(run_dir)
        with open_weights(run_dir / "weights.safetensors") as fh:
            sizes = {n: math.prod(fh.get_slice(n).get_shape()) for n in fh.keys()}
        s, f, p = fit_run(label, read_parquet(run_dir / "drift.parquet", "the run's drift.parquet"),
                          read_jsonl(run_dir / "run.jsonl", "the run's run.jsonl"), sizes)
        series.append(s)
        fits.append(f)
        params.append(p)
    params_df = pd.concat(params, ignore_index=True)
    for path, df in ((args.series, pd.concat(series, ignore_index=True)), (args.fits, pd.DataFrame(fits)),
                     (args.params, params_df), (args.kinds, summarize_kinds(params_df))):
        write_csv(path, df)
