"""`esft <stage>`: every workflow stage as a plain command, for debugging without Snakemake.

Config slices arrive as JSON (`--cfg '{"sigma": 0.01}'`) or as a path to a YAML/JSON file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("esft")


def _cfg(value: str) -> dict[str, Any]:
    """Parse a JSON object given inline or as a file path."""
    text = Path(value).read_text(encoding="utf-8") if not value.lstrip().startswith("{") else value
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f"expected a mapping, got {type(data).__name__}")
    return data


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

    prepare_task(args.task, args.cfg, args.out)


def cmd_base_model(args) -> None:
    from esft.io import read_jsonl
    from esft.models import build_base_model
    from esft.tasks import get_task

    held_out = set()
    for test_file in args.held_out:
        task = get_task(Path(test_file).parent.name)
        held_out.update(task.user_prompt(r) for r in read_jsonl(test_file))
    build_base_model(args.cfg["source"], args.out, args.cfg.get("tiny"), held_out, args.cfg.get("revision"),
                     args.cfg.get("pad_token"))


def cmd_train(args) -> None:
    from esft.training import TrainJob, train

    train(TrainJob(
        method=args.method, task=args.task, base=args.base, data=Path(args.data), task_cfg=args.task_cfg,
        cfg=args.cfg, out=Path(args.out), init=args.init, run_id=args.run_id,
        state_dir=Path(args.state_dir) if args.state_dir else None, device=args.device, dtype=args.dtype,
        corpus=args.corpus, save_dtype=args.save_dtype,
    ))


def cmd_prepare_corpus(args) -> None:
    from esft.tasks.corpus import prepare_corpus

    prepare_corpus(args.cfg, args.out)


def cmd_replay(args) -> None:
    from esft.errors import EsftError
    from esft.es.trainer import replay
    from esft.io import read_jsonl
    from esft.models import load_model
    from esft.runs import save_weights

    records = read_jsonl(args.run)
    if not records:
        raise EsftError(f"{args.run}: the run log has no iterations")
    # the run's own dtype and device unless overridden: replay is bitwise only on those
    dtype = args.dtype or records[0].get("dtype", "float32")
    device = args.device or records[0].get("device", "cpu")
    model, _ = load_model(args.base, args.init, dtype=dtype, device=device)
    weights = replay(model, records)
    save_weights(args.out, weights)


def cmd_evaluate(args) -> None:
    from esft.evaluate.accuracy import evaluate_tasks, write_evaluation
    from esft.models import load_model

    model, tokenizer = load_model(args.base, args.weights, dtype=args.dtype, device=args.device)
    data = _pairs(args.data)
    metrics, completions = evaluate_tasks(model, tokenizer, {k: Path(v) for k, v in data.items()},
                                          args.tasks_cfg, args.cfg["generation_batch_size"])
    write_evaluation(args.out, metrics, completions)


def cmd_collect_accuracy(args) -> None:
    from esft.evaluate.accuracy import collect_accuracy
    from esft.io import atomic_open

    df = collect_accuracy(_pairs(args.metrics))
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


def cmd_figure(args) -> None:
    import pandas as pd

    from esft.plots import figures

    dpi = args.cfg.get("dpi", 120)
    if args.kind == "accuracy":
        figures.accuracy_sequential(pd.read_csv(args.inputs[0]), args.out, dpi)
    else:
        figures.training_fitness(_pairs(args.inputs), args.out, dpi)


def cmd_table(args) -> None:
    import pandas as pd

    from esft.plots.tables import accuracy_matrix, write_table

    df = pd.read_csv(args.input)
    if args.kind == "accuracy":
        df = accuracy_matrix(df)
    write_table(df, args.csv, args.md, args.cfg.get("float_format", ".3f"))


# --- parser -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esft", description=__doc__)
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
    p.add_argument("--out", required=True)

    p = add("train", cmd_train, "train one stage of one method on one task")
    model_args(p)
    p.add_argument("--method", default="es", help="es, grpo or lbes")
    p.add_argument("--task", required=True)
    p.add_argument("--run-id", default="", help="the run's identity, method/schedule/stage-task: keys its noise "
                   "and seeds apart from other stages (the workflow sets it)")
    p.add_argument("--task-cfg", type=_cfg, required=True)
    p.add_argument("--init", default=None, help="weights.safetensors to start from (default: the base)")
    p.add_argument("--data", required=True, help="the task's data directory")
    p.add_argument("--cfg", type=_cfg, required=True, help="the method's config slice")
    p.add_argument("--state-dir", default=None, help="resumable state, outside the outputs")
    p.add_argument("--corpus", default=None, help="jsonl of {text} rows for es.fitness: loglik "
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
    p.add_argument("--out", required=True, help="weights.safetensors to write")

    p = add("evaluate", cmd_evaluate, "accuracy of one checkpoint on every task's test split")
    model_args(p)
    p.add_argument("--weights", default=None)
    p.add_argument("--data", nargs="+", required=True, help="TASK=DATA_DIR ...")
    p.add_argument("--tasks-cfg", type=_cfg, required=True)
    p.add_argument("--cfg", type=_cfg, required=True, help="the evaluate config slice")
    p.add_argument("--out", required=True)

    p = add("collect-accuracy", cmd_collect_accuracy, "gather metric files into one long CSV")
    p.add_argument("--metrics", nargs="+", required=True, help="LABEL=metrics.json ...")
    p.add_argument("--out", required=True)

    p = add("norms", cmd_norms, "update norms ||θ − θ₀|| of checkpoints")
    p.add_argument("--base", required=True)
    p.add_argument("--checkpoints", nargs="+", required=True, help="LABEL=weights.safetensors ...")
    p.add_argument("--out", required=True)

    p = add("figure", cmd_figure, "draw a figure")
    p.add_argument("kind", choices=["accuracy", "fitness"])
    p.add_argument("--inputs", nargs="+", required=True, help="accuracy.csv, or LABEL=run.jsonl ...")
    p.add_argument("--cfg", type=_cfg, default={})
    p.add_argument("--out", required=True)

    p = add("table", cmd_table, "write a table as CSV and Markdown")
    p.add_argument("kind", choices=["accuracy", "norms"])
    p.add_argument("--input", required=True)
    p.add_argument("--cfg", type=_cfg, default={})
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
