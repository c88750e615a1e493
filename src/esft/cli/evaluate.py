"""`esft` commands of the evaluate stage: accuracy of checkpoints and along runs, KL between checkpoints,
and the holdout benchmarks through lm-eval (with the data they read offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from esft.cli.args import (MODEL, NLTK_DATA, Stage, arg, cfg, checkpoint_outputs, config_slice, labelled_paths,
                           task_data, task_data_args)

stage = Stage()

WEIGHTS = arg("--weights", nargs="+", default=None, help="weights.safetensors of each checkpoint (default: the "
              "base model)")
BENCHMARK = arg("--benchmark", required=True, choices=["mmlu", "ifeval"])


def _benchmark_slice(args) -> dict[str, Any]:
    """--cfg of a holdout stage: the benchmark's section under holdout.benchmarks."""
    return config_slice(args.cfg, f"holdout.benchmarks.{args.benchmark}", f"holdout.benchmarks.{args.benchmark}")


@stage.command("evaluate", "accuracy of checkpoints on every task's test split", [
    MODEL,
    WEIGHTS,
    task_data_args(),
    cfg(help="the evaluate config slice"),
    arg("--out", nargs="+", required=True, help="accuracy.json of each checkpoint (completions.jsonl beside)"),
])
def cmd_evaluate(args) -> None:
    from esft.evaluate.accuracy import (evaluate_tasks, load_evaluated, reload_weights, task_requests,
                                        write_evaluation)

    config_slice(args.cfg, "evaluate", "evaluate:generation_batch_size", "evaluate:backend", "evaluate:vllm")
    data = task_data(args)
    model = tokenizer = None
    for weights, out in checkpoint_outputs(args):
        if model is None or weights is None:
            model, tokenizer = load_evaluated(args.base, weights, args.dtype, args.device, args.cfg,
                                              task_requests(data, args.tasks_cfg))
        else:  # the next checkpoint into the loaded model (or engine): every trainable tensor is replaced
            reload_weights(model, weights)
        metrics, completions = evaluate_tasks(model, tokenizer, data, args.tasks_cfg, args.cfg["generation_batch_size"])
        write_evaluation(out, metrics, completions)


@stage.command("collect-accuracy", "gather metric files into one long CSV", [
    arg("--metrics", nargs="+", required=True, help="LABEL=metrics.json ..."),
    arg("--out", required=True),
])
def cmd_collect_accuracy(args) -> None:
    from esft.evaluate.accuracy import collect_accuracy
    from esft.io import write_csv

    df = collect_accuracy(labelled_paths(args.metrics))
    write_csv(args.out, df)


@stage.command("test-curve", "evaluate runs along training: each run's weights after every "
               "`every` iterations and at its end, rebuilt from run.jsonl (replay), on every task's test split", [
    MODEL,
    arg("--runs", nargs="+", required=True, help="run.jsonl of each run (single stage from the base)"),
    task_data_args(),
    cfg(help="{generation_batch_size, every}"),
    arg("--out", nargs="+", required=True, help="test-curve jsonl of each run (completions with their "
        "iteration)"),
])
def cmd_test_curve(args) -> None:
    from esft.evaluate.test_curve import evaluate_along
    from esft.io import read_jsonl, write_jsonl
    from esft.methods.es.trainer import replayed
    from esft.models import load_model

    if len(args.runs) != len(args.out):
        raise SystemExit(f"esft test-curve: --runs and --out take one path per run ({len(args.runs)} runs, "
                         f"{len(args.out)} outputs)")
    config_slice(args.cfg, "evaluate", "evaluate:generation_batch_size", "evaluate.test_curve")
    data = task_data(args)
    model, tokenizer = load_model(args.base, dtype=args.dtype, device=args.device)
    for run, out in zip(args.runs, args.out):
        records = read_jsonl(run, "a run's run.jsonl")
        write_jsonl(out, evaluate_along(args.base, records, model, tokenizer, data, args.tasks_cfg,
                                        args.cfg["generation_batch_size"], args.cfg["every"], replayed))


@stage.command("prompt-rewards", "per test prompt: the task's reward of the base and of runs "
               "along their test curves (recomputed from the completions and the test rows); the mean test reward "
               "per iteration with each run's best iteration, and the per-prompt rewards there", [
    arg("--base", required=True, help="the base model's completions.jsonl (iteration 0)"),
    arg("--curves", nargs="*", default=[], help="LABEL=test_curve.jsonl ..."),
    task_data_args("TASK=DATA_DIR ... (the tasks kept)", "the tasks' config (format_bonus)"),
    arg("--curve-out", required=True, help="CSV: mean test reward per checkpoint, task and iteration"),
    arg("--out", required=True, help="CSV: per-prompt rewards of the base and each run at its best"),
])
def cmd_prompt_rewards(args) -> None:
    from esft.evaluate.test_curve import at_best, curve_rewards, summarise
    from esft.io import write_csv

    rewards = curve_rewards(args.base, labelled_paths(args.curves), task_data(args), args.tasks_cfg)
    summary = summarise(rewards)
    for df, out in ((summary, args.curve_out), (at_best(rewards, summary), args.out)):
        write_csv(out, df)


@stage.command("accuracy-curves", "test accuracy along single-task runs at their cumulative "
               "wall time and generated tokens: the base, replayed iterations and the final checkpoint, one CSV", [
    arg("--base-accuracy", required=True, help="the base model's accuracy.json (iteration 0)"),
    arg("--runs", nargs="+", required=True, help="LABEL=run.jsonl ... (LABEL: method/single/1-task)"),
    arg("--points", nargs="+", required=True,
        help="LABEL@K=accuracy.json ... (K: iterations replayed, or final for the run's checkpoint)"),
    arg("--out", required=True),
])
def cmd_accuracy_curves(args) -> None:
    import pandas as pd

    from esft.evaluate.curves import accuracy_curve
    from esft.io import read_json, read_jsonl, write_csv
    from esft.labels import checkpoint_fields

    base = read_json(args.base_accuracy, "the base model's accuracy.json")
    runs = {label: read_jsonl(path, "a run's run.jsonl") for label, path in labelled_paths(args.runs).items()}
    points: dict[str, dict[int, float]] = {label: {} for label in runs}
    for key, path in labelled_paths(args.points).items():
        label, sep, k = key.rpartition("@")
        if not sep or label not in runs:
            raise SystemExit(f"esft: expected LABEL@K=accuracy.json with LABEL one of --runs, got {key}")
        task = checkpoint_fields(label)["trained_task"]
        accuracy = read_json(path, "a checkpoint's accuracy.json")[task]["accuracy"]
        points[label][len(runs[label]) if k == "final" else int(k)] = accuracy
    df = pd.concat([accuracy_curve(label, records, base[checkpoint_fields(label)["trained_task"]]["accuracy"],
                                   points[label]) for label, records in runs.items()], ignore_index=True)
    write_csv(args.out, df)


@stage.command("kl", "KL(reference ‖ checkpoint) per token on every task's test prompts, along "
               "completions sampled from the reference", [
    MODEL,
    arg("--reference", nargs="+", default=None, help="the earlier checkpoint's weights.safetensors, or "
        "base, per checkpoint (default: the base)"),
    arg("--weights", nargs="+", required=True, help="the later checkpoint's weights.safetensors, per pair"),
    task_data_args(),
    cfg(help="the evaluate.kl config slice"),
    arg("--completions", nargs="+", required=True, help="jsonl of the sampled completions' token ids and "
        "KL, per pair"),
    arg("--out", nargs="+", required=True, help="per-task KL json, per pair"),
])
def cmd_kl(args) -> None:
    from esft.evaluate.kl import kl_on_tasks
    from esft.io import write_json, write_jsonl
    from esft.models import load_model

    if not len(args.weights) == len(args.reference or args.weights) == len(args.completions) == len(args.out):
        raise SystemExit("esft kl: --weights, --reference (if given), --completions and --out take one path per "
                         "checkpoint")
    config_slice(args.cfg, "evaluate.kl", "evaluate.kl")
    data = task_data(args)
    references = [None if r == "base" else r for r in args.reference or ["base"] * len(args.weights)]
    for reference_weights, weights, completions, out in zip(references, args.weights, args.completions, args.out):
        reference, tokenizer = load_model(args.base, reference_weights, dtype=args.dtype, device=args.device)
        model, _ = load_model(args.base, weights, dtype=args.dtype, device=args.device)
        metrics, records = kl_on_tasks(reference, model, tokenizer, data, args.tasks_cfg, args.cfg)
        write_jsonl(completions, records)
        write_json(out, metrics)


@stage.command("collect-kl", "gather KL files into one long CSV", [
    arg("--pairs", nargs="+", required=True, help="LABEL:REFERENCE=kl.json ... (REFERENCE previous or base)"),
    arg("--out", required=True),
])
def cmd_collect_kl(args) -> None:
    from esft.evaluate.kl import collect_kl
    from esft.io import write_csv

    files = {}
    for key, path in labelled_paths(args.pairs).items():
        label, sep, reference = key.rpartition(":")
        if not sep:
            raise SystemExit(f"esft: expected LABEL:REFERENCE=PATH, got {key}={path}")
        files[label, reference] = path
    df = collect_kl(files)
    write_csv(args.out, df)


@stage.command("holdout-data", "write offline stand-in rows of a holdout benchmark (MMLU or "
               "IFEval schema) from a seed", [
    BENCHMARK,
    cfg(help="the benchmark's config slice (n, seed)"),
    arg("--out", required=True, help="jsonl to write (a .manifest.json goes beside it)"),
])
def cmd_holdout_data(args) -> None:
    from esft.evaluate.holdout_data import write_holdout_data

    _benchmark_slice(args)
    write_holdout_data(args.benchmark, args.cfg, args.out)


@stage.command("holdout-snapshot", "save the evaluated split of a holdout benchmark's hub "
               "dataset as parquet, once, where the hub is reachable", [
    BENCHMARK,
    cfg(help="the benchmark's config slice (dataset, config_name, revision)"),
    arg("--out", required=True, help="directory: <split>.parquet and manifest.json"),
])
def cmd_holdout_snapshot(args) -> None:
    from esft.evaluate.holdout_data import snapshot_holdout

    _benchmark_slice(args)
    snapshot_holdout(args.benchmark, args.cfg, args.out)


@stage.command("nltk-data", "write NLTK's English punkt_tab model (for IFEval scoring) offline", [
    arg("--out", required=True, help="an NLTK data root: tokenizers/punkt_tab/english is written below it"),
])
def cmd_nltk_data(args) -> None:
    from esft.evaluate.punkt import write_punkt_tab

    write_punkt_tab(args.out)


@stage.command("holdout", "one holdout benchmark (mmlu, ifeval) of checkpoints through lm-eval", [
    MODEL,
    WEIGHTS,
    BENCHMARK,
    cfg(help="the benchmark's config slice"),
    arg("--data", default=None, help="rows of `esft holdout-data` (source synthetic), or the directory "
        "of `esft holdout-snapshot` (source hf with a hub dataset)"),
    NLTK_DATA,
    arg("--tasks-dir", default=None, help="our lm-eval task YAMLs (default: resources/lm_eval of this checkout)"),
    arg("--batch-size", type=int, default=16, help="lm-eval (HFLM) batch size"),
    arg("--out", nargs="+", required=True, help="<benchmark>.json of each checkpoint (samples go to "
        "<benchmark>.samples.jsonl beside it)"),
])
def cmd_holdout(args) -> None:
    from esft.evaluate.punkt import use_nltk_data

    _benchmark_slice(args)
    # before lm-eval's IFEval modules are imported: their import tries to download punkt_tab otherwise
    punkt = use_nltk_data(args.nltk_data) if args.nltk_data else None
    from esft.evaluate.holdout import run_holdout, write_holdout
    from esft.models import load_model

    for weights, out in checkpoint_outputs(args):
        model, tokenizer = load_model(args.base, weights, dtype=args.dtype, device=args.device)
        record, samples = run_holdout(model, tokenizer, args.benchmark, args.cfg, data=args.data,
                                      tasks_dir=args.tasks_dir and Path(args.tasks_dir), batch_size=args.batch_size)
        if punkt is not None:
            record["punkt_tab"] = {"path": str(Path(args.nltk_data).resolve()), "sha256_sorted_lines": punkt}
        record["checkpoint"] = {"base": str(args.base), "weights": weights}
        write_holdout(out, record, samples)


@stage.command("collect-holdout", "gather holdout records into one tidy CSV", [
    arg("--results", nargs="+", required=True, help="LABEL/BENCHMARK=record.json ..."),
    arg("--out", required=True),
])
def cmd_collect_holdout(args) -> None:
    from esft.evaluate.holdout import collect_holdout
    from esft.io import write_csv

    df = collect_holdout(labelled_paths(args.results))
    write_csv(args.out, df)
