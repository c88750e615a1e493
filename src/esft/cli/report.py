"""`esft` commands of the report stage: figures, tables and the paper's findings, from the files earlier
stages wrote."""

from __future__ import annotations

from esft.cli.args import Stage, arg, cfg, config_slice, labelled_paths

stage = Stage()

FIGURE_OPTIONS = ("training", "pretraining", "interpolation", "probes", "probes_holdout", "drift", "lora_training")
"""Figures with their own section under figures: (the others take dpi only)."""

FINDINGS_INPUTS = ("deltas", "interpolation", "drift_fits", "probes", "probes_holdout", "accuracy", "kl")


@stage.command("figure", "draw a figure (one file per --out path; png, pdf)", [
    arg("kind", choices=["accuracy", "kl", "fitness", "training", "pretraining", "interpolation", "probes",
                         "probes-holdout", "drift", "lora-rewards", "lora-cumulative", "lora-training",
                         "accuracy-cost"]),
    arg("--inputs", nargs="+", required=True,
        help="accuracy.csv, kl.csv, interpolation.csv, probes.csv, probes_holdout.csv, drift_series.csv "
        "drift_kinds.csv [drift_params.csv], lora_prompt_rewards.csv (lora-rewards, lora-cumulative), "
        "accuracy_curves.csv (accuracy-cost), or LABEL=run.jsonl ... (fitness, training, pretraining, lora-training)"),
    arg("--methods", nargs=2, help="interpolation: the methods at λ = 0 and 1"),
    arg("--test-curves", help="lora-training: lora_test_curves.csv (esft prompt-rewards --curve-out)"),
    cfg(default={}, help="dpi and the figure's own options"),
    arg("--out", nargs="+", required=True),
])
def cmd_figure(args) -> None:
    from esft.io import read_csv
    from esft.plots import figures

    own = args.kind.replace("-", "_")
    config_slice(args.cfg, "figures", "figures:dpi", *([f"figures.{own}"] if own in FIGURE_OPTIONS else []))
    options = dict(args.cfg)
    dpi = options.pop("dpi", 120)
    if args.kind == "accuracy":
        figures.accuracy_sequential(read_csv(args.inputs[0]), args.out, dpi)
    elif args.kind == "kl":
        figures.kl_sequential(read_csv(args.inputs[0]), args.out, dpi)
    elif args.kind == "fitness":
        figures.training_fitness(labelled_paths(args.inputs), args.out, dpi)
    elif args.kind == "training":
        figures.training_curves(labelled_paths(args.inputs), args.out, dpi, **options)
    elif args.kind == "pretraining":
        figures.pretraining_loss(labelled_paths(args.inputs), args.out, dpi, **options)
    elif args.kind == "interpolation":
        figures.interpolation(read_csv(args.inputs[0]), args.methods, args.out, dpi, **options)
    elif args.kind == "probes":
        figures.probes(read_csv(args.inputs[0]), args.out, dpi, **options)
    elif args.kind == "lora-rewards":
        figures.lora_prompt_rewards(read_csv(args.inputs[0]), args.out, dpi)
    elif args.kind == "lora-cumulative":
        figures.lora_cumulative_reward(read_csv(args.inputs[0]), args.out, dpi)
    elif args.kind == "lora-training":
        figures.lora_training(labelled_paths(args.inputs), read_csv(args.test_curves), args.out, dpi, **options)
    elif args.kind == "accuracy-cost":
        figures.accuracy_vs_cost(read_csv(args.inputs[0]), args.out, dpi)
    elif args.kind == "probes-holdout":
        figures.probes_holdout(read_csv(args.inputs[0]), args.out, dpi, **options)
    else:
        params = read_csv(args.inputs[2]) if len(args.inputs) > 2 else None
        figures.drift(read_csv(args.inputs[0]), read_csv(args.inputs[1]), args.out, dpi, params=params, **options)


@stage.command("table", "write a table as CSV, Markdown and (with --tex) LaTeX", [
    arg("kind", choices=["accuracy", "norms", "single-task", "norm-ratio", "holdout", "time-to-accuracy",
                         "lora-rewards"]),
    arg("--input", required=True,
        help="accuracy.csv, update_norms.csv, deltas.csv, holdout.csv, accuracy_curves.csv or "
        "lora_test_curves.csv"),
    arg("--runs", nargs="*", default=[], help="single-task: LABEL=run.jsonl of each single run"),
    arg("--budgets", nargs="*", default=[], help="single-task: LABEL@K=accuracy.json ..."),
    cfg(default={}),
    arg("--csv", required=True),
    arg("--md", required=True),
    arg("--tex", default=None),
])
def cmd_table(args) -> None:
    import pandas as pd

    from esft.io import read_csv, read_jsonl
    from esft.labels import checkpoint_fields
    from esft.plots import tables

    own = {"single-task": ["tables.single_task"], "time-to-accuracy": ["tables.time_to_accuracy"]}.get(args.kind, [])
    config_slice(args.cfg, "tables", *(["tables"] if args.kind == "holdout" else ["tables:float_format", *own]))
    df = read_csv(args.input)
    float_format = args.cfg.get("float_format", ".3f")
    keys = tables.CHECKPOINT_KEYS
    if args.kind == "accuracy":
        df = tables.accuracy_matrix(df)
    elif args.kind == "norms":
        fields = pd.DataFrame([checkpoint_fields(label) for label in df["checkpoint"]]).drop(columns="seed")
        df = tables.by_checkpoint(pd.concat([fields, df.drop(columns="checkpoint")], axis=1))
    elif args.kind == "single-task":
        steps = {label: len(read_jsonl(path, "a run's run.jsonl")) for label, path in labelled_paths(args.runs).items()}
        df, keys = tables.single_task(df, steps, labelled_paths(args.budgets), args.cfg.get("columns")), ["task"]
    elif args.kind == "norm-ratio":
        df, keys = tables.norm_ratio(df), ["stage", "task"]
    elif args.kind == "holdout":
        from esft.evaluate.holdout import holdout_matrix

        df = holdout_matrix(df)
    if args.kind == "time-to-accuracy":
        df = tables.time_to_accuracy(df, args.cfg["fraction"], args.cfg.get("targets"))
        tables.write_table(df, args.csv, args.md, float_format, args.tex)
    elif args.kind == "lora-rewards":
        tables.write_table(tables.lora_rewards(df), args.csv, args.md, float_format, args.tex)
    else:
        csv, display = tables.over_seeds(df, keys, float_format)
        tables.write_table(csv, args.csv, args.md, float_format, args.tex, display=display)


@stage.command("findings", "whether each of the paper's qualitative findings holds, with its number", [
    arg("--methods", nargs=2, required=True, help="the compared methods (ES-like first)"),
    arg("--deltas", default=None),
    arg("--interpolation", default=None),
    arg("--drift-fits", default=None),
    arg("--probes", default=None),
    arg("--probes-holdout", default=None),
    arg("--accuracy", default=None, help="eval/accuracy.csv: the learning claims"),
    arg("--kl", default=None, help="eval/kl.csv: the forgetting claim"),
    cfg(help="the thresholds (geometry.findings)"),
    arg("--csv", required=True),
    arg("--md", required=True),
])
def cmd_findings(args) -> None:
    from esft.io import read_csv
    from esft.plots.tables import findings, write_table

    config_slice(args.cfg, "geometry.findings", "geometry.findings")
    inputs = {name: read_csv(getattr(args, name)) for name in FINDINGS_INPUTS if getattr(args, name)}
    write_table(findings(args.methods, args.cfg, **inputs), args.csv, args.md)
