"""What the stage commands share: their declaration (`Stage`), the argument groups several stages repeat,
and reading arguments (config slices, `LABEL=PATH` pairs, prepared task data)."""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Arguments = Callable[[argparse.ArgumentParser], Any]
"""Adds one argument, or a group of them, to a command's parser."""


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Callable[[argparse.Namespace], None]
    arguments: list[Arguments]


class Stage:
    """The commands of one stage, in the order `esft --help` lists them; `@stage.command(...)` declares a
    command beside its handler."""

    def __init__(self) -> None:
        self.commands: list[Command] = []

    def command(self, name: str, help: str, arguments: list[Arguments]):
        """Declare the decorated handler as `esft NAME` (help doubles as its description), with `arguments`
        added to its parser in order."""
        def register(run: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], None]:
            self.commands.append(Command(name, help, run, arguments))
            return run
        return register


def arg(*flags: str, **options: Any) -> Arguments:
    """One argument, as `add_argument(*flags, **options)` adds it. Each parser gets its own copy of the
    options: a stage fills a config slice's defaults into the dict it was given (`--cfg`'s default {} too)."""
    return lambda p: p.add_argument(*flags, **copy.deepcopy(options))


def group(*arguments: Arguments) -> Arguments:
    """Arguments that several commands take together."""
    return lambda p: [a(p) for a in arguments]


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


def cfg(flag: str = "--cfg", **options: Any) -> Arguments:
    """A config slice (`_cfg`: inline JSON or a YAML/JSON file), required unless it has a default."""
    return arg(flag, type=_cfg, required="default" not in options, **options)


BASE = arg("--base", required=True, help="base-model directory (with model.json), hub id or path")
MODEL = group(BASE, arg("--dtype", default="float32"), arg("--device", default="cpu"))
"""The model a stage loads: --base, --dtype, --device."""
NLTK_DATA = arg("--nltk-data", default=None, help="NLTK data root holding punkt_tab (needed by ifeval)")


def task_data_args(data_help: str = "TASK=DATA_DIR ...", tasks_help: str | None = None) -> Arguments:
    """--data and --tasks-cfg of the stages that read the rows prepare-task wrote (`task_data`)."""
    return group(arg("--data", nargs="+", required=True, help=data_help), cfg("--tasks-cfg", help=tasks_help))


def config_slice(cfg: dict[str, Any], where: str, *parts: str, option: str = "--cfg") -> dict[str, Any]:
    """A stage's config slice validated as the workflow's config is (config/schema.yaml, defaults filled):
    `parts` as `esft.config.slice_schema` takes them, `where` the slice's place in a workflow config."""
    from esft.config import slice_schema, validate_slice

    return validate_slice(cfg, slice_schema(*parts), where, option)


def tasks_slice(cfg: dict[str, Any], task: str | None = None, option: str = "--tasks-cfg") -> dict[str, Any]:
    """The tasks slice (or one task's, `--task-cfg`) of a stage that reads the rows prepare-task wrote: it
    needs max_new_tokens (and format_bonus), never where the rows came from, so only max_new_tokens is
    required of each task."""
    from esft.config import slice_schema, validate_slice

    schema = slice_schema("tasks" if task is None else "tasks.*")
    (schema if task else schema["additionalProperties"])["required"] = ["max_new_tokens"]
    return validate_slice(cfg, schema, "tasks" if task is None else f"tasks.{task}", option)


def task_data(args) -> dict[str, Path]:
    """`--data TASK=DATA_DIR ...` of a stage that reads the rows prepare-task wrote, once its `--tasks-cfg` is
    validated."""
    tasks_slice(args.tasks_cfg)
    return {k: Path(v) for k, v in labelled_paths(args.data).items()}


def labelled_paths(values: list[str]) -> dict[str, str]:
    """`label=path` arguments as an ordered dict."""
    out = {}
    for v in values:
        label, sep, path = v.partition("=")
        if not sep:
            raise SystemExit(f"esft: expected LABEL=PATH, got {v!r}")
        out[label] = path
    return out


def checkpoint_outputs(args) -> list[tuple[str | None, str]]:
    """(weights or None for the base, out) of each checkpoint a batched stage command evaluates: the
    workflow evaluates every checkpoint of a seed in one process, so imports and start-up are paid once."""
    weights = args.weights or [None]
    if len(weights) != len(args.out):
        raise SystemExit(f"esft {args.stage}: --weights and --out take one path per checkpoint "
                         f"({len(args.weights or [])} weights, {len(args.out)} outputs)")
    return list(zip(weights, args.out))
