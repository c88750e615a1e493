"""`esft` commands of the data stage: what every run starts from (the config checked, a task's rows, the
base model)."""

from __future__ import annotations

from pathlib import Path

from esft.cli.args import Stage, arg, cfg, config_slice

stage = Stage()


@stage.command("check-config", "validate a workflow config file (or several, layered in order, "
               "as snakemake --configfile A B) against the schema", [
    arg("config", nargs="+"),
    arg("--schema", default="config/schema.yaml"),
])
def cmd_check_config(args) -> None:
    from esft.config import load_config

    load_config(args.config, args.schema)
    print(f"{' + '.join(args.config)}: valid")


@stage.command("prepare-task", "write a task's train/test jsonl and manifest", [
    arg("--task", required=True),
    cfg(help="the task's config slice"),
    arg("--out", required=True),
])
def cmd_prepare_task(args) -> None:
    from esft.tasks.prepare import prepare_task

    config_slice(args.cfg, f"tasks.{args.task}", "tasks.*")
    prepare_task(args.task, args.cfg, args.out)


@stage.command("base-model", "build the tiny model or write a pointer to a real one", [
    cfg(help="the model config slice"),
    arg("--held-out", nargs="*", default=[], help="test.jsonl files whose prompts the warm-start avoids"),
    arg("--prebuilt", default=None, help="a shipped build of the tiny model to copy after checking it "
        "matches the config and held-out prompts (default: build it)"),
    arg("--out", required=True),
])
def cmd_base_model(args) -> None:
    from esft.models import build_base_model
    from esft.tasks import get_task, read_rows

    config_slice(args.cfg, "model", "model")
    held_out = set()
    for test_file in args.held_out:
        task = get_task(Path(test_file).parent.name)
        held_out.update(task.user_prompt(r) for r in read_rows(task, test_file))
    build_base_model(args.cfg["source"], args.out, args.cfg.get("tiny"), held_out, args.cfg.get("revision"),
                     args.cfg.get("pad_token"), args.prebuilt)
