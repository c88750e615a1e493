"""`esft` commands of the train stage: the corpus a method may train on, one stage of one method, and the
replay that rebuilds an ES-engine run's weights from its log."""

from __future__ import annotations

from pathlib import Path

from esft.cli.args import BASE, MODEL, Stage, arg, cfg, config_slice, tasks_slice

stage = Stage()


@stage.command("train", "train one stage of one method on one task", [
    MODEL,
    arg("--method", default="es", help="es, grpo, lbes or adamw"),
    arg("--task", required=True),
    arg("--run-id", default="", help="the run's identity, method/schedule/stage-task: keys its noise "
        "and seeds apart from other stages (the workflow sets it)"),
    cfg("--task-cfg"),
    arg("--init", default=None, help="weights.safetensors to start from (default: the base)"),
    arg("--data", required=True, help="the task's data directory"),
    cfg(help="the method's config slice"),
    arg("--state-dir", default=None, help="resumable state, outside the outputs"),
    arg("--corpus", default=None, help="jsonl of {text} rows for es.fitness: loglik and adamw "
        "(default: the train rows' conversations with reference answers)"),
    arg("--save-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
        help="dtype of the exported weights.safetensors (resume state keeps the fp32 master)"),
    arg("--out", required=True),
])
def cmd_train(args) -> None:
    from esft.methods import METHODS, train
    from esft.runs import TrainJob

    if args.method in METHODS:  # an unknown one is train's error
        config_slice(args.cfg, args.run_id.split("/", 1)[0] or args.method, f"$defs.{args.method}")
    tasks_slice(args.task_cfg, args.task, "--task-cfg")
    train(TrainJob(
        method=args.method, task=args.task, base=args.base, data=Path(args.data), task_cfg=args.task_cfg,
        cfg=args.cfg, out=Path(args.out), init=args.init, run_id=args.run_id,
        state_dir=Path(args.state_dir) if args.state_dir else None, device=args.device, dtype=args.dtype,
        corpus=args.corpus, save_dtype=args.save_dtype,
    ))


@stage.command("prepare-corpus", "write a text corpus ({text} rows) for es.fitness: loglik", [
    cfg(help="the corpus config slice"),
    arg("--out", required=True, help="corpus.jsonl to write (a manifest goes next to it)"),
])
def cmd_prepare_corpus(args) -> None:
    from esft.tasks.corpus import prepare_corpus

    config_slice(args.cfg, "corpus", "corpus")
    prepare_corpus(args.cfg, args.out)


@stage.command("replay", "rebuild a run's final weights from its initial weights and run.jsonl "
               "(bitwise on the run's dtype and device, which it uses unless told otherwise)", [
    BASE,
    arg("--dtype", default=None, help="default: the dtype recorded in run.jsonl"),
    arg("--device", default=None, help="default: the device recorded in run.jsonl"),
    arg("--init", default=None, help="the run's initial weights.safetensors (default: the base)"),
    arg("--run", required=True, help="the run's run.jsonl"),
    arg("--iterations", type=int, default=None,
        help="rebuild the weights after this many iterations (default: all; Table 1's earlier budgets)"),
    arg("--out", required=True, help="weights.safetensors to write"),
])
def cmd_replay(args) -> None:
    from esft.errors import EsftError
    from esft.io import read_jsonl
    from esft.methods.es.trainer import replay
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
