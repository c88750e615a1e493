"""`esft <stage>`: every workflow stage as a plain command, for debugging without Snakemake.

Config slices arrive as JSON (`--cfg '{"sigma": 0.01}'`) or as a path to a YAML/JSON file.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml

log = logging.getLogger("esft")


def _cfg(value: str) -> dict[str, Any]:
    """Parse a JSON object given inline, or a YAML/JSON file given by path.

    Inline text is JSON (what the rules pass): YAML 1.1 would read JSON's `5e-07` as a string.
    """
    if value.lstrip().startswith("{"):
        try:
            data = json.loads(value)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"not a JSON object: {err}") from None
    else:
        try:
            data = yaml.safe_load(Path(value).read_text(encoding="utf-8"))
        except OSError as err:
            raise argparse.ArgumentTypeError(f"{value}: {err.strerror} (expected a JSON object or a YAML file)") \
                from None
        except yaml.YAMLError as err:
            raise argparse.ArgumentTypeError(f"{value}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f"expected a mapping, got {type(data).__name__}")
    return data


def _slice(cfg: dict[str, Any], where: str, *parts: str, option: str = "--cfg") -> dict[str, Any]:
    """A stage's config slice validated as the workflow's config is (config/schema.yaml, defaults filled):
    `parts` as `esft.config.slice_schema` takes them, `where` the slice's place in a workflow config."""
    from esft.config import slice_schema, validate_slice

    return validate_slice(cfg, slice_schema(*parts), where, option)


def _tasks_slice(cfg: dict[str, Any], task: str | None = None, option: str = "--tasks-cfg") -> dict[str, Any]:
    """The tasks slice (or one task's, `--task-cfg`) of a stage that reads the rows prepare-task wrote: it
    needs max_new_tokens (and format_bonus), never where the rows came from, so only max_new_tokens is
    required of each task."""
    from esft.config import slice_schema, validate_slice

    schema = slice_schema("tasks" if task is None else "tasks.*")
    (schema if task else schema["additionalProperties"])["required"] = ["max_new_tokens"]
    return validate_slice(cfg, schema, "tasks" if task is None else f"tasks.{task}", option)


def _task_data(args) -> dict[str, Path]:
    """`--data TASK=DATA_DIR ...` of a stage that reads the rows prepare-task wrote, once its `--tasks-cfg` is
    validated."""
    _tasks_slice(args.tasks_cfg)
    return {k: Path(v) for k, v in _pairs(args.data).items()}


def _pairs(values: list[str]) -> dict[str, str]:
    """`label=path` arguments as an ordered dict."""
    out = {}
    for v in values:
        label, sep, path = v.partition("=")
        if not sep:
            raise SystemExit(f"esft: expected LABEL=PATH, got {v!r}")
        out[label] = path
    return out


# --- stages -------------------------------------------------------------------------------------
def cmd_check_config(args) -> None:
    from esft.config import load_config

    load_config(args.config, args.schema)
    print(f"{' + '.join(args.config)}: valid")


def cmd_prepare_task(args) -> None:
    from esft.tasks.prepare import prepare_task

    _slice(args.cfg, f"tasks.{args.task}", "tasks.*")
    prepare_task(args.task, args.cfg, args.out)


def cmd_base_model(args) -> None:
    from esft.models import build_base_model
    from esft.tasks import get_task, read_rows

    _slice(args.cfg, "model", "model")
    held_out = set()
    for test_file in args.held_out:
        task = get_task(Path(test_file).parent.name)
        held_out.update(task.user_prompt(r) for r in read_rows(task, test_file))
    build_base_model(args.cfg["source"], args.out, args.cfg.get("tiny"), held_out, args.cfg.get("revision"),
                     args.cfg.get("pad_token"), args.prebuilt)


def cmd_train(args) -> None:
    from esft.training import METHODS, TrainJob, train

    if args.method in METHODS:  # an unknown one is train's error
        _slice(args.cfg, args.run_id.split("/", 1)[0] or args.method, f"$defs.{args.method}")
    _tasks_slice(args.task_cfg, args.task, "--task-cfg")
    train(TrainJob(
        method=args.method, task=args.task, base=args.base, data=Path(args.data), task_cfg=args.task_cfg,
        cfg=args.cfg, out=Path(args.out), init=args.init, run_id=args.run_id,
        state_dir=Path(args.state_dir) if args.state_dir else None, device=args.device, dtype=args.dtype,
        corpus=args.corpus, save_dtype=args.save_dtype,
    ))


def cmd_prepare_corpus(args) -> None:
    from esft.tasks.corpus import prepare_corpus

    _slice(args.cfg, "corpus", "corpus")
    prepare_corpus(args.cfg, args.out)


def cmd_replay(args) -> None:
    from esft.errors import EsftError
    from esft.es.trainer import replay
    from esft.io import read_jsonl
    from esft.models import load_model
    from esft.runs import save_weights

    records = read_jsonl(args.run, "the run's run.jsonl")
    if not records:
        raise EsftError(f"{args.run}: the run log has no iterations")
    if args.iterations is not None:
        if not 1 <= args.iterations <= len(records):
            raise EsftError(f"{args.run}: --iterations {args.iterations} outside 1..{len(records)} (the run's length)")
        records = records[:args.iterations]
    # the run's own dtype and device unless overridden: replay is bitwise only on those
    dtype = args.dtype or records[0].get("dtype", "float32")
    device = args.device or records[0].get("device", "cpu")
    model, _ = load_model(args.base, args.init, dtype=dtype, device=device)
    weights = replay(model, records)
    save_weights(args.out, weights)


def _checkpoints(args) -> list[tuple[str | None, str]]:
    """(weights or None for the base, out) of each checkpoint a batched stage command evaluates: the
    workflow evaluates every checkpoint of a seed in one process, so imports and start-up are paid once."""
    weights = args.weights or [None]
    if len(weights) != len(args.out):
        raise SystemExit(f"esft {args.stage}: --weights and --out take one path per checkpoint "
                         f"({len(args.weights or [])} weights, {len(args.out)} outputs)")
    return list(zip(weights, args.out))


def cmd_evaluate(args) -> None:
    from esft.evaluate.accuracy import (evaluate_tasks, load_evaluated, reload_weights, task_requests,
                                        write_evaluation)

    _slice(args.cfg, "evaluate", "evaluate:generation_batch_size", "evaluate:backend", "evaluate:vllm")
    data = _task_data(args)
    model = tokenizer = None
    for weights, out in _checkpoints(args):
        if model is None or weights is None:
            model, tokenizer = load_evaluated(args.base, weights, args.dtype, args.device, args.cfg,
                                              task_requests(data, args.tasks_cfg))
        else:  # the next checkpoint into the loaded model (or engine): every trainable tensor is replaced
            reload_weights(model, weights)
        metrics, completions = evaluate_tasks(model, tokenizer, data, args.tasks_cfg, args.cfg["generation_batch_size"])
        write_evaluation(out, metrics, completions)


def cmd_collect_accuracy(args) -> None:
    from esft.evaluate.accuracy import collect_accuracy
    from esft.io import atomic_open

    df = collect_accuracy(_pairs(args.metrics))
    with atomic_open(args.out) as fh:
        df.to_csv(fh, index=False)


def cmd_test_curve(args) -> None:
    from esft.evaluate.test_curve import evaluate_along
    from esft.io import read_jsonl, write_jsonl
    from esft.models import load_model

    if len(args.runs) != len(args.out):
        raise SystemExit(f"esft test-curve: --runs and --out take one path per run ({len(args.runs)} runs, "
                         f"{len(args.out)} outputs)")
    _slice(args.cfg, "evaluate", "evaluate:generation_batch_size", "evaluate.test_curve")
    data = _task_data(args)
    model, tokenizer = load_model(args.base, dtype=args.dtype, device=args.device)
    for run, out in zip(args.runs, args.out):
        records = read_jsonl(run, "a run's run.jsonl")
        write_jsonl(out, evaluate_along(args.base, records, model, tokenizer, data, args.tasks_cfg,
                                        args.cfg["generation_batch_size"], args.cfg["every"]))


def cmd_prompt_rewards(args) -> None:
    from esft.evaluate.test_curve import at_best, curve_rewards, summarise
    from esft.io import atomic_open

    rewards = curve_rewards(args.base, _pairs(args.curves), _task_data(args), args.tasks_cfg)
    summary = summarise(rewards)
    for df, out in ((summary, args.curve_out), (at_best(rewards, summary), args.out)):
        with atomic_open(out) as fh:
            df.to_csv(fh, index=False)


def cmd_accuracy_curves(args) -> None:
    import pandas as pd

    from esft.labels import checkpoint_fields
    from esft.evaluate.curves import accuracy_curve
    from esft.io import atomic_open, read_json, read_jsonl

    base = read_json(args.base_accuracy, "the base model's accuracy.json")
    runs = {label: read_jsonl(path, "a run's run.jsonl") for label, path in _pairs(args.runs).items()}
    points: dict[str, dict[int, float]] = {label: {} for label in runs}
    for key, path in _pairs(args.points).items():
        label, sep, k = key.rpartition("@")
        if not sep or label not in runs:
            raise SystemExit(f"esft: expected LABEL@K=accuracy.json with LABEL one of --runs, got {key}")
        task = checkpoint_fields(label)["trained_task"]
        accuracy = read_json(path, "a checkpoint's accuracy.json")[task]["accuracy"]
        points[label][len(runs[label]) if k == "final" else int(k)] = accuracy
    df = pd.concat([accuracy_curve(label, records, base[checkpoint_fields(label)["trained_task"]]["accuracy"],
                                   points[label]) for label, records in runs.items()], ignore_index=True)
    with atomic_open(args.out) as fh:
        df.to_csv(fh, index=False)


def cmd_kl(args) -> None:
    from esft.evaluate.kl import kl_on_tasks
    from esft.io import write_json, write_jsonl
    from esft.models import load_model

    if not len(args.weights) == len(args.reference or args.weights) == len(args.completions) == len(args.out):
        raise SystemExit("esft kl: --weights, --reference (if given), --completions and --out take one path per "
                         "checkpoint")
    _slice(args.cfg, "evaluate.kl", "evaluate.kl")
    data = _task_data(args)
    references = [None if r == "base" else r for r in args.reference or ["base"] * len(args.weights)]
    for reference_weights, weights, completions, out in zip(references, args.weights, args.completions, args.out):
        reference, tokenizer = load_model(args.base, reference_weights, dtype=args.dtype, device=args.device)
        model, _ = load_model(args.base, weights, dtype=args.dtype, device=args.device)
        metrics, records = kl_on_tasks(reference, model, tokenizer, data, args.tasks_cfg, args.cfg)
        write_jsonl(completions, records)
        write_json(out, metrics)


def cmd_collect_kl(args) -> None:
    from esft.evaluate.kl import collect_kl
    from esft.io import atomic_open

    files = {}
    for key, path in _pairs(args.pairs).items():
        label, sep, reference = key.rpartition(":")
        if not sep:
            raise SystemExit(f"esft: expected LABEL:REFERENCE=PATH, got {key}={path}")
        files[label, reference] = path
    df = collect_kl(files)
    with atomic_open(args.out) as fh:
        df.to_csv(fh, index=False)


def _benchmark_slice(args) -> dict[str, Any]:
    """--cfg of a holdout stage: the benchmark's section under holdout.benchmarks."""
    return _slice(args.cfg, f"holdout.benchmarks.{args.benchmark}", f"holdout.benchmarks.{args.benchmark}")


def cmd_holdout_data(args) -> None:
    from esft.evaluate.holdout_data import write_holdout_data

    _benchmark_slice(args)
    write_holdout_data(args.benchmark, args.cfg, args.out)


def cmd_holdout_snapshot(args) -> None:
    from esft.evaluate.holdout_data import snapshot_holdout

    _benchmark_slice(args)
    snapshot_holdout(args.benchmark, args.cfg, args.out)


def cmd_nltk_data(args) -> None:
    from esft.evaluate.punkt import write_punkt_tab

    write_punkt_tab(args.out)


def cmd_holdout(args) -> None:
    from esft.evaluate.punkt import use_nltk_data

    _benchmark_slice(args)
    # before lm-eval's IFEval modules are imported: their import tries to download punkt_tab otherwise
    punkt = use_nltk_data(args.nltk_data) if args.nltk_data else None
    from esft.evaluate.holdout import run_holdout, write_holdout
    from esft.models import load_model

    for weights, out in _checkpoints(args):
        model, tokenizer = load_model(args.base, weights, dtype=args.dtype, device=args.device)
        record, samples = run_holdout(model, tokenizer, args.benchmark, args.cfg, data=args.data,
                                      tasks_dir=args.tasks_dir and Path(args.tasks_dir), batch_size=args.batch_size)
        if punkt is not None:
            record["punkt_tab"] = {"path": str(Path(args.nltk_data).resolve()), "sha256_sorted_lines": punkt}
        record["checkpoint"] = {"base": str(args.base), "weights": weights}
        write_holdout(out, record, samples)


def cmd_collect_holdout(args) -> None:
    from esft.evaluate.holdout import collect_holdout
    from esft.io import atomic_open

    df = collect_holdout(_pairs(args.results))
    with atomic_open(args.out) as fh:
        df.to_csv(fh, index=False)


def cmd_norms(args) -> None:
    from esft.geometry.norms import update_norms
    from esft.io import atomic_open
    from esft.models import load_model

    model, _ = load_model(args.base)
    theta0 = {n: p.detach() for n, p in model.named_parameters()}
    df = update_norms(theta0, _pairs(args.checkpoints))
    with atomic_open(args.out) as fh:
        df.to_csv(fh, index=False)


GENERATION = ("geometry:generation_batch_size", "geometry:variants_per_pass")
"""The evaluation settings both pair stages' slices share (the rules' geometry_cfg)."""


def _geometry_inputs(args):
    """(model, tokenizer, θ₀, {label: (Δ_a, Δ_b)} loaded lazily, pair paths) for the pair stages."""
    from esft.geometry.variants import base_weights
    from esft.models import load_model

    model, tokenizer = load_model(args.base, dtype=args.dtype, device=args.device)
    pairs = {label: tuple(paths.split(",")) for label, paths in _pairs(args.pairs).items()}
    if any(len(p) != 2 for p in pairs.values()):
        raise SystemExit("esft: --pairs takes LABEL=WEIGHTS_A,WEIGHTS_B")
    return model, tokenizer, base_weights(model), pairs


def cmd_geometry_deltas(args) -> None:
    from esft.geometry.deltas import compare_deltas
    from esft.io import atomic_open

    _, _, theta0, pairs = _geometry_inputs(args)
    df = compare_deltas(theta0, pairs, tuple(args.methods))
    with atomic_open(args.out) as fh:
        df.to_csv(fh, index=False)


def cmd_interpolate(args) -> None:
    import pandas as pd

    from esft.geometry.deltas import split_label
    from esft.labels import split_seed
    from esft.geometry.interpolation import interpolation_variants
    from esft.geometry.variants import evaluate_variants, load_delta
    from esft.io import atomic_open

    _slice(args.cfg, "geometry.interpolation", *GENERATION, "geometry.interpolation")
    data = _task_data(args)
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
    with atomic_open(args.out) as fh:
        pd.DataFrame(rows).to_csv(fh, index=False)


def cmd_probe(args) -> None:
    import pandas as pd

    from esft.geometry.deltas import split_label
    from esft.labels import split_seed
    from esft.geometry.probes import probe_variants, random_directions
    from esft.geometry.variants import evaluate_variants, load_delta
    from esft.io import atomic_open

    _slice(args.cfg, "geometry.probes", *GENERATION, "geometry.probes")
    data = _task_data(args)
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
    with atomic_open(args.out) as fh:
        pd.DataFrame(rows).to_csv(fh, index=False)


def cmd_probe_holdout(args) -> None:
    from esft.evaluate.punkt import use_nltk_data

    _slice(args.cfg, "geometry.probes", "geometry.probes")
    _slice(args.holdout_cfg, "holdout", "holdout:batch_size", "holdout:benchmarks", option="--holdout-cfg")
    # before lm-eval's IFEval modules are imported: their import tries to download punkt_tab otherwise
    if args.nltk_data:
        use_nltk_data(args.nltk_data)
    import pandas as pd

    from esft.geometry.deltas import split_label
    from esft.labels import split_seed
    from esft.geometry.probe_holdout import holdout_rows
    from esft.geometry.probes import probe_variants, random_directions
    from esft.geometry.variants import load_delta
    from esft.io import atomic_open

    model, tokenizer, theta0, pairs = _geometry_inputs(args)
    randoms = random_directions(theta0, args.cfg["random_directions"], args.cfg["seed"])
    scales = sorted({0.0, *map(float, args.cfg["scales"])})  # θ₀ always: every change is measured from it
    data = {b: Path(p) for b, p in _pairs(args.data).items()}
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
    with atomic_open(args.out) as fh:
        pd.DataFrame(rows).to_csv(fh, index=False)


def cmd_drift(args) -> None:
    import pandas as pd

    from esft.geometry.drift import fit_run, summarize_kinds
    from esft.io import atomic_open, open_weights, read_jsonl, read_parquet

    series, fits, params = [], [], []
    for label, run_dir in _pairs(args.runs).items():
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
        with atomic_open(path) as fh:
            df.to_csv(fh, index=False)


FIGURE_OPTIONS = ("training", "pretraining", "interpolation", "probes", "probes_holdout", "drift", "lora_training")
"""Figures with their own section under figures: (the others take dpi only)."""


def cmd_figure(args) -> None:
    from esft.io import read_csv
    from esft.plots import figures

    own = args.kind.replace("-", "_")
    _slice(args.cfg, "figures", "figures:dpi", *([f"figures.{own}"] if own in FIGURE_OPTIONS else []))
    cfg = dict(args.cfg)
    dpi = cfg.pop("dpi", 120)
    if args.kind == "accuracy":
        figures.accuracy_sequential(read_csv(args.inputs[0]), args.out, dpi)
    elif args.kind == "kl":
        figures.kl_sequential(read_csv(args.inputs[0]), args.out, dpi)
    elif args.kind == "fitness":
        figures.training_fitness(_pairs(args.inputs), args.out, dpi)
    elif args.kind == "training":
        figures.training_curves(_pairs(args.inputs), args.out, dpi, **cfg)
    elif args.kind == "pretraining":
        figures.pretraining_loss(_pairs(args.inputs), args.out, dpi, **cfg)
    elif args.kind == "interpolation":
        figures.interpolation(read_csv(args.inputs[0]), args.methods, args.out, dpi, **cfg)
    elif args.kind == "probes":
        figures.probes(read_csv(args.inputs[0]), args.out, dpi, **cfg)
    elif args.kind == "lora-rewards":
        figures.lora_prompt_rewards(read_csv(args.inputs[0]), args.out, dpi)
    elif args.kind == "lora-cumulative":
        figures.lora_cumulative_reward(read_csv(args.inputs[0]), args.out, dpi)
    elif args.kind == "lora-training":
        figures.lora_training(_pairs(args.inputs), read_csv(args.test_curves), args.out, dpi, **cfg)
    elif args.kind == "accuracy-cost":
        figures.accuracy_vs_cost(read_csv(args.inputs[0]), args.out, dpi)
    elif args.kind == "probes-holdout":
        figures.probes_holdout(read_csv(args.inputs[0]), args.out, dpi, **cfg)
    else:
        params = read_csv(args.inputs[2]) if len(args.inputs) > 2 else None
        figures.drift(read_csv(args.inputs[0]), read_csv(args.inputs[1]), args.out, dpi, params=params, **cfg)


def cmd_table(args) -> None:
    import pandas as pd

    from esft.io import read_csv, read_jsonl
    from esft.plots import tables

    from esft.labels import checkpoint_fields

    own = {"single-task": ["tables.single_task"], "time-to-accuracy": ["tables.time_to_accuracy"]}.get(args.kind, [])
    _slice(args.cfg, "tables", *(["tables"] if args.kind == "holdout" else ["tables:float_format", *own]))
    df = read_csv(args.input)
    float_format = args.cfg.get("float_format", ".3f")
    keys = tables.CHECKPOINT_KEYS
    if args.kind == "accuracy":
        df = tables.accuracy_matrix(df)
    elif args.kind == "norms":
        fields = pd.DataFrame([checkpoint_fields(label) for label in df["checkpoint"]]).drop(columns="seed")
        df = tables.by_checkpoint(pd.concat([fields, df.drop(columns="checkpoint")], axis=1))
    elif args.kind == "single-task":
        steps = {label: len(read_jsonl(path, "a run's run.jsonl")) for label, path in _pairs(args.runs).items()}
        df, keys = tables.single_task(df, steps, _pairs(args.budgets), args.cfg.get("columns")), ["task"]
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


def cmd_findings(args) -> None:
    from esft.io import read_csv
    from esft.plots.tables import findings, write_table

    _slice(args.cfg, "geometry.findings", "geometry.findings")
    inputs = {name: read_csv(getattr(args, name)) for name in FINDINGS_INPUTS if getattr(args, name)}
    write_table(findings(args.methods, args.cfg, **inputs), args.csv, args.md)


FINDINGS_INPUTS = ("deltas", "interpolation", "drift_fits", "probes", "probes_holdout", "accuracy", "kl")


# --- parser -------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error (the usage is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="esft", description=__doc__)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="stage", required=True)

    def add(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--base", required=True, help="base-model directory (with model.json), hub id or path")
        p.add_argument("--dtype", default="float32")
        p.add_argument("--device", default="cpu")

    def task_data_args(p: argparse.ArgumentParser, data_help: str = "TASK=DATA_DIR ...",
                       tasks_help: str | None = None) -> None:
        """--data and --tasks-cfg of the stages that read the rows prepare-task wrote (`_task_data`)."""
        p.add_argument("--data", nargs="+", required=True, help=data_help)
        p.add_argument("--tasks-cfg", type=_cfg, required=True, help=tasks_help)

    p = add("check-config", cmd_check_config, "validate a workflow config file (or several, layered in order, "
            "as snakemake --configfile A B) against the schema")
    p.add_argument("config", nargs="+")
    p.add_argument("--schema", default="config/schema.yaml")

    p = add("prepare-task", cmd_prepare_task, "write a task's train/test jsonl and manifest")
    p.add_argument("--task", required=True)
    p.add_argument("--cfg", type=_cfg, required=True, help="the task's config slice")
    p.add_argument("--out", required=True)

    p = add("base-model", cmd_base_model, "build the tiny model or write a pointer to a real one")
    p.add_argument("--cfg", type=_cfg, required=True, help="the model config slice")
    p.add_argument("--held-out", nargs="*", default=[], help="test.jsonl files whose prompts the warm-start avoids")
    p.add_argument("--prebuilt", default=None, help="a shipped build of the tiny model to copy after checking it "
                   "matches the config and held-out prompts (default: build it)")
    p.add_argument("--out", required=True)

    p = add("train", cmd_train, "train one stage of one method on one task")
    model_args(p)
    p.add_argument("--method", default="es", help="es, grpo, lbes or adamw")
    p.add_argument("--task", required=True)
    p.add_argument("--run-id", default="", help="the run's identity, method/schedule/stage-task: keys its noise "
                   "and seeds apart from other stages (the workflow sets it)")
    p.add_argument("--task-cfg", type=_cfg, required=True)
    p.add_argument("--init", default=None, help="weights.safetensors to start from (default: the base)")
    p.add_argument("--data", required=True, help="the task's data directory")
    p.add_argument("--cfg", type=_cfg, required=True, help="the method's config slice")
    p.add_argument("--state-dir", default=None, help="resumable state, outside the outputs")
    p.add_argument("--corpus", default=None, help="jsonl of {text} rows for es.fitness: loglik and adamw "
                   "(default: the train rows' conversations with reference answers)")
    p.add_argument("--save-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the exported weights.safetensors (resume state keeps the fp32 master)")
    p.add_argument("--out", required=True)

    p = add("prepare-corpus", cmd_prepare_corpus, "write a text corpus ({text} rows) for es.fitness: loglik")
    p.add_argument("--cfg", type=_cfg, required=True, help="the corpus config slice")
    p.add_argument("--out", required=True, help="corpus.jsonl to write (a manifest goes next to it)")

    p = add("replay", cmd_replay, "rebuild a run's final weights from its initial weights and run.jsonl "
            "(bitwise on the run's dtype and device, which it uses unless told otherwise)")
    p.add_argument("--base", required=True, help="base-model directory (with model.json), hub id or path")
    p.add_argument("--dtype", default=None, help="default: the dtype recorded in run.jsonl")
    p.add_argument("--device", default=None, help="default: the device recorded in run.jsonl")
    p.add_argument("--init", default=None, help="the run's initial weights.safetensors (default: the base)")
    p.add_argument("--run", required=True, help="the run's run.jsonl")
    p.add_argument("--iterations", type=int, default=None,
                   help="rebuild the weights after this many iterations (default: all; Table 1's earlier budgets)")
    p.add_argument("--out", required=True, help="weights.safetensors to write")

    p = add("evaluate", cmd_evaluate, "accuracy of checkpoints on every task's test split")
    model_args(p)
    p.add_argument("--weights", nargs="+", default=None, help="weights.safetensors of each checkpoint (default: the "
                   "base model)")
    task_data_args(p)
    p.add_argument("--cfg", type=_cfg, required=True, help="the evaluate config slice")
    p.add_argument("--out", nargs="+", required=True, help="accuracy.json of each checkpoint (completions.jsonl beside)")

    p = add("collect-accuracy", cmd_collect_accuracy, "gather metric files into one long CSV")
    p.add_argument("--metrics", nargs="+", required=True, help="LABEL=metrics.json ...")
    p.add_argument("--out", required=True)

    p = add("test-curve", cmd_test_curve, "evaluate runs along training: each run's weights after every "
            "`every` iterations and at its end, rebuilt from run.jsonl (replay), on every task's test split")
    model_args(p)
    p.add_argument("--runs", nargs="+", required=True, help="run.jsonl of each run (single stage from the base)")
    task_data_args(p)
    p.add_argument("--cfg", type=_cfg, required=True, help="{generation_batch_size, every}")
    p.add_argument("--out", nargs="+", required=True, help="test-curve jsonl of each run (completions with their "
                   "iteration)")

    p = add("prompt-rewards", cmd_prompt_rewards, "per test prompt: the task's reward of the base and of runs "
            "along their test curves (recomputed from the completions and the test rows); the mean test reward "
            "per iteration with each run's best iteration, and the per-prompt rewards there")
    p.add_argument("--base", required=True, help="the base model's completions.jsonl (iteration 0)")
    p.add_argument("--curves", nargs="*", default=[], help="LABEL=test_curve.jsonl ...")
    task_data_args(p, "TASK=DATA_DIR ... (the tasks kept)", "the tasks' config (format_bonus)")
    p.add_argument("--curve-out", required=True, help="CSV: mean test reward per checkpoint, task and iteration")
    p.add_argument("--out", required=True, help="CSV: per-prompt rewards of the base and each run at its best")

    p = add("accuracy-curves", cmd_accuracy_curves, "test accuracy along single-task runs at their cumulative "
            "wall time and generated tokens: the base, replayed iterations and the final checkpoint, one CSV")
    p.add_argument("--base-accuracy", required=True, help="the base model's accuracy.json (iteration 0)")
    p.add_argument("--runs", nargs="+", required=True, help="LABEL=run.jsonl ... (LABEL: method/single/1-task)")
    p.add_argument("--points", nargs="+", required=True,
                   help="LABEL@K=accuracy.json ... (K: iterations replayed, or final for the run's checkpoint)")
    p.add_argument("--out", required=True)

    p = add("kl", cmd_kl, "KL(reference ‖ checkpoint) per token on every task's test prompts, along "
            "completions sampled from the reference")
    model_args(p)
    p.add_argument("--reference", nargs="+", default=None, help="the earlier checkpoint's weights.safetensors, or "
                   "base, per checkpoint (default: the base)")
    p.add_argument("--weights", nargs="+", required=True, help="the later checkpoint's weights.safetensors, per pair")
    task_data_args(p)
    p.add_argument("--cfg", type=_cfg, required=True, help="the evaluate.kl config slice")
    p.add_argument("--completions", nargs="+", required=True, help="jsonl of the sampled completions' token ids and "
                   "KL, per pair")
    p.add_argument("--out", nargs="+", required=True, help="per-task KL json, per pair")

    p = add("collect-kl", cmd_collect_kl, "gather KL files into one long CSV")
    p.add_argument("--pairs", nargs="+", required=True, help="LABEL:REFERENCE=kl.json ... (REFERENCE previous or base)")
    p.add_argument("--out", required=True)

    p = add("holdout-data", cmd_holdout_data, "write offline stand-in rows of a holdout benchmark (MMLU or "
            "IFEval schema) from a seed")
    p.add_argument("--benchmark", required=True, choices=["mmlu", "ifeval"])
    p.add_argument("--cfg", type=_cfg, required=True, help="the benchmark's config slice (n, seed)")
    p.add_argument("--out", required=True, help="jsonl to write (a .manifest.json goes beside it)")

    p = add("holdout-snapshot", cmd_holdout_snapshot, "save the evaluated split of a holdout benchmark's hub "
            "dataset as parquet, once, where the hub is reachable")
    p.add_argument("--benchmark", required=True, choices=["mmlu", "ifeval"])
    p.add_argument("--cfg", type=_cfg, required=True, help="the benchmark's config slice (dataset, config_name, revision)")
    p.add_argument("--out", required=True, help="directory: <split>.parquet and manifest.json")

    p = add("nltk-data", cmd_nltk_data, "write NLTK's English punkt_tab model (for IFEval scoring) offline")
    p.add_argument("--out", required=True, help="an NLTK data root: tokenizers/punkt_tab/english is written below it")

    p = add("holdout", cmd_holdout, "one holdout benchmark (mmlu, ifeval) of checkpoints through lm-eval")
    model_args(p)
    p.add_argument("--weights", nargs="+", default=None, help="weights.safetensors of each checkpoint (default: the "
                   "base model)")
    p.add_argument("--benchmark", required=True, choices=["mmlu", "ifeval"])
    p.add_argument("--cfg", type=_cfg, required=True, help="the benchmark's config slice")
    p.add_argument("--data", default=None, help="rows of `esft holdout-data` (source synthetic), or the directory "
                   "of `esft holdout-snapshot` (source hf with a hub dataset)")
    p.add_argument("--nltk-data", default=None, help="NLTK data root holding punkt_tab (needed by ifeval)")
    p.add_argument("--tasks-dir", default=None, help="our lm-eval task YAMLs (default: resources/lm_eval of this checkout)")
    p.add_argument("--batch-size", type=int, default=16, help="lm-eval (HFLM) batch size")
    p.add_argument("--out", nargs="+", required=True, help="<benchmark>.json of each checkpoint (samples go to "
                   "<benchmark>.samples.jsonl beside it)")

    p = add("collect-holdout", cmd_collect_holdout, "gather holdout records into one tidy CSV")
    p.add_argument("--results", nargs="+", required=True, help="LABEL/BENCHMARK=record.json ...")
    p.add_argument("--out", required=True)

    p = add("norms", cmd_norms, "update norms ||θ − θ₀|| of checkpoints")
    p.add_argument("--base", required=True)
    p.add_argument("--checkpoints", nargs="+", required=True, help="LABEL=weights.safetensors ...")
    p.add_argument("--out", required=True)

    def pair_args(p: argparse.ArgumentParser) -> None:
        model_args(p)
        p.add_argument("--methods", nargs=2, required=True, help="the two methods compared, a and b")
        p.add_argument("--pairs", nargs="+", required=True,
                       help="LABEL=WEIGHTS_A,WEIGHTS_B ... (LABEL: schedule/k-task, checkpoints of a and b)")
        p.add_argument("--out", required=True)

    p = add("geometry-deltas", cmd_geometry_deltas, "norms, norm ratio and cosine of two methods' updates")
    pair_args(p)

    p = add("interpolate", cmd_interpolate, "accuracy along θ(λ) = (1−λ)θ_a + λθ_b at each checkpoint pair")
    pair_args(p)
    task_data_args(p, "TASK=DATA_DIR ... (tasks evaluated)")
    p.add_argument("--cfg", type=_cfg, required=True,
                   help="{grid, generation_batch_size, variants_per_pass}")

    p = add("probe", cmd_probe, "accuracy on the trained task along normalised update and random directions")
    pair_args(p)
    task_data_args(p, "TASK=DATA_DIR ... (each pair's trained task)")
    p.add_argument("--cfg", type=_cfg, required=True,
                   help="{scales, random_directions, seed, generation_batch_size, variants_per_pass}")

    p = add("probe-holdout", cmd_probe_holdout, "holdout benchmarks (lm-eval) along normalised update and random "
            "directions, each probe's weights loaded into the model in memory")
    pair_args(p)
    p.add_argument("--cfg", type=_cfg, required=True, help="{scales, random_directions, seed} (s = 0 is always added)")
    p.add_argument("--holdout-cfg", type=_cfg, required=True, help="{batch_size, benchmarks}: the holdout slice")
    p.add_argument("--data", nargs="*", default=[], help="BENCHMARK=ROWS ... of `esft holdout-data` (source synthetic)")
    p.add_argument("--nltk-data", default=None, help="NLTK data root holding punkt_tab (needed by ifeval)")
    p.add_argument("--tasks-dir", default=None, help="our lm-eval task YAMLs (default: this checkout's resources/lm_eval)")

    p = add("drift", cmd_drift, "fit ||θ_t − θ₀||² against step per run and parameter (Proposition 1)")
    p.add_argument("--runs", nargs="+", required=True, help="LABEL=RUN_DIR ... (weights, run.jsonl, drift.parquet)")
    p.add_argument("--series", required=True, help="csv: total drift and theory per step")
    p.add_argument("--fits", required=True, help="csv: one fit per run")
    p.add_argument("--params", required=True, help="csv: one fit per run and parameter")
    p.add_argument("--kinds", required=True, help="csv: per-parameter fits summarised by kind")

    p = add("figure", cmd_figure, "draw a figure (one file per --out path; png, pdf)")
    p.add_argument("kind", choices=["accuracy", "kl", "fitness", "training", "pretraining", "interpolation", "probes",
                                    "probes-holdout", "drift", "lora-rewards", "lora-cumulative", "lora-training",
                                    "accuracy-cost"])
    p.add_argument("--inputs", nargs="+", required=True,
                   help="accuracy.csv, kl.csv, interpolation.csv, probes.csv, probes_holdout.csv, drift_series.csv "
                   "drift_kinds.csv [drift_params.csv], lora_prompt_rewards.csv (lora-rewards, lora-cumulative), accuracy_curves.csv "
                   "(accuracy-cost), or LABEL=run.jsonl ... (fitness, training, pretraining, lora-training)")
    p.add_argument("--methods", nargs=2, help="interpolation: the methods at λ = 0 and 1")
    p.add_argument("--test-curves", help="lora-training: lora_test_curves.csv (esft prompt-rewards --curve-out)")
    p.add_argument("--cfg", type=_cfg, default={}, help="dpi and the figure's own options")
    p.add_argument("--out", nargs="+", required=True)

    p = add("table", cmd_table, "write a table as CSV, Markdown and (with --tex) LaTeX")
    p.add_argument("kind", choices=["accuracy", "norms", "single-task", "norm-ratio", "holdout", "time-to-accuracy",
                                    "lora-rewards"])
    p.add_argument("--input", required=True,
                   help="accuracy.csv, update_norms.csv, deltas.csv, holdout.csv, accuracy_curves.csv or "
                   "lora_test_curves.csv")
    p.add_argument("--runs", nargs="*", default=[], help="single-task: LABEL=run.jsonl of each single run")
    p.add_argument("--budgets", nargs="*", default=[], help="single-task: LABEL@K=accuracy.json ...")
    p.add_argument("--cfg", type=_cfg, default={})
    p.add_argument("--csv", required=True)
    p.add_argument("--md", required=True)
    p.add_argument("--tex", default=None)

    p = add("findings", cmd_findings, "whether each of the paper's qualitative findings holds, with its number")
    p.add_argument("--methods", nargs=2, required=True, help="the compared methods (ES-like first)")
    p.add_argument("--deltas", default=None)
    p.add_argument("--interpolation", default=None)
    p.add_argument("--drift-fits", default=None)
    p.add_argument("--probes", default=None)
    p.add_argument("--probes-holdout", default=None)
    p.add_argument("--accuracy", default=None, help="eval/accuracy.csv: the learning claims")
    p.add_argument("--kl", default=None, help="eval/kl.csv: the forgetting claim")
    p.add_argument("--cfg", type=_cfg, required=True, help="the thresholds (geometry.findings)")
    p.add_argument("--csv", required=True)
    p.add_argument("--md", required=True)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from esft.errors import EsftError

    try:
        args.func(args)
    except EsftError as err:
        log.error("%s", err)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
