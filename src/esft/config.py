"""Workflow config validation with one-line errors naming the key and what is allowed.

Defaults written in the schema are filled in, so a config file only needs the keys it changes.
"""

from __future__ import annotations

import copy
import functools
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from esft.errors import EsftError
from esft.io import input_file


log = logging.getLogger(__name__)


class ConfigError(EsftError):
    """A config key, type or value the schema does not allow."""


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema) -> Iterator[Any]:
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])  # never share the schema's object
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def _describe(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    parts = []
    kind = schema.get("type")
    if kind:
        parts.append(" or ".join(kind) if isinstance(kind, list) else kind)
    for word, key in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if word in schema:
            parts.append(f"{key} {schema[word]}")
    if "pattern" in schema:
        parts.append(f"matching {schema['pattern']}")
    if "minItems" in schema:
        parts.append(f"at least {schema['minItems']} item(s)")
    if "minProperties" in schema:
        parts.append(f"with at least {schema['minProperties']} key(s)")
    return " ".join(parts) or "see config/schema.yaml"


def _message(error: jsonschema.ValidationError, root: str = "") -> str:
    where = ".".join(([root] if root else []) + [str(p) for p in error.absolute_path]) or "<top level>"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        patterns = list(error.schema.get("patternProperties", {}))
        extra = sorted(k for k in set(error.instance) - set(allowed) if not any(re.search(p, k) for p in patterns))
        allowed += [f"keys matching {p}" for p in patterns]
        return f"config error: {where}: unknown key(s) {', '.join(map(repr, extra))}; allowed: {', '.join(allowed)}"
    if "propertyNames" in error.schema_path:
        return f"config error: {where}: unknown key {error.instance!r}; allowed: {_describe(error.schema)}"
    if error.validator == "required":
        return f"config error: {where}: {error.message}"
    return f"config error: {where} = {error.instance!r} is not allowed; allowed: {_describe(error.schema)}"


def _first_error(config: Any, schema: dict[str, Any]) -> jsonschema.ValidationError | None:
    """The shallowest problem (defaults filled into `config` on the way), or None."""
    errors = sorted(_Validator(schema).iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    return errors[0] if errors else None


def read_yaml(path: str | Path, expected: str) -> Any:
    """A YAML file the user named; missing or unparsable is one line naming it."""
    with input_file(path, expected):
        text = Path(path).read_text(encoding="utf-8")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]}; expected {expected})") from None


def validate_config(config: dict[str, Any], schema: str | Path | dict[str, Any]) -> dict[str, Any]:
    """Fill schema defaults into `config` in place and raise ConfigError on the first problem."""
    if not isinstance(schema, dict):
        schema = read_yaml(schema, "the config schema")
    error = _first_error(config, schema)
    if error is not None:
        raise ConfigError(_message(error))
    _check_references(config)
    unpinned = unpinned_revisions(config)
    if unpinned:
        log.warning("config: hub revision(s) not pinned to a commit sha, so a later run may read other weights "
                    "or rows: %s", ", ".join(f"{key} = {value}" for key, value in unpinned))
    return config


COMMIT = re.compile(r"[0-9a-f]{40}")
LOCAL_DATASETS = ("json", "parquet", "csv")
"""Dataset builders that read local files (data_files), not a hub repository."""


def unpinned_revisions(config: dict[str, Any]) -> list[tuple[str, Any]]:
    """(key, value) of each revision of a hub model or dataset the config reads that is not a commit sha:
    `main` (or no revision) follows the repository's branch. Synthetic tasks, the tiny or a local model,
    local files and lm-eval's own MMLU group (which takes no revision) read no hub revision."""
    sources = []
    model = config.get("model", {})
    if model.get("source", "tiny") != "tiny" and not Path(model["source"]).exists():
        sources.append(("model.revision", model))
    sources += [(f"tasks.{name}.revision", task) for name, task in config.get("tasks", {}).items()
                if task.get("source") == "hf" and task.get("dataset") not in LOCAL_DATASETS]
    if config.get("corpus") and config["corpus"].get("dataset") not in LOCAL_DATASETS:
        sources.append(("corpus.revision", config["corpus"]))
    sources += [(f"holdout.benchmarks.{name}.revision", cfg)
                for name, cfg in ((config.get("holdout") or {}).get("benchmarks") or {}).items()
                if cfg.get("source") == "hf" and cfg.get("dataset") not in LOCAL_DATASETS
                and cfg.get("protocol") != "loglikelihood"]
    return [(key, cfg.get("revision")) for key, cfg in sources if not COMMIT.fullmatch(str(cfg.get("revision")))]


def method_kind(method: str) -> str:
    """The training method that runs `method`: es, grpo, lbes or adamw, or the KIND of a variant KIND_LABEL."""
    return method.split("_", 1)[0]


def _check_references(config: dict[str, Any]) -> None:
    """Cross-key checks the schema cannot express: trained tasks must be configured tasks, the λ grid
    holds the checkpoints (0 and 1), every trained method needs its config section, only ES-engine
    methods shard over processes, and an AdamW run follows the minibatches of a trained method."""
    train, tasks = config.get("train", {}), config.get("tasks", {})
    lists = {key: train.get(key, []) for key in ("sequential", "single", "overrides")}
    for method, own in train.get("per_method", {}).items():
        lists.update({f"per_method.{method}.{key}": names for key, names in own.items()})
    for key, names in lists.items():
        for name in names:
            if name not in tasks:
                raise ConfigError(
                    f"config error: train.{key}: task {name!r} is not under tasks; allowed: {', '.join(tasks)}"
                )
    grid = config.get("geometry", {}).get("interpolation", {}).get("grid", [0, 1])
    if 0 not in grid or 1 not in grid:
        raise ConfigError(f"config error: geometry.interpolation.grid = {grid!r} is not allowed; allowed: "
                          "λ values that include 0 and 1")
    for method in train.get("methods", []):
        if method not in config:
            raise ConfigError(f"config error: train.methods lists {method!r} but the config has no {method}: section")
        if "seed" in config[method]:
            raise ConfigError(f"config error: {method}.seed is not allowed in a workflow config: each run's seed "
                              f"comes from seeds: (here {config.get('seeds', [0])}); remove it")
    for method, processes in train.get("processes", {}).items():
        if method not in train.get("methods", []):
            raise ConfigError(f"config error: train.processes.{method}: {method!r} is not in train.methods")
        if processes > 1 and method_kind(method) in ("grpo", "adamw"):
            raise ConfigError(f"config error: train.processes.{method} = {processes}: {method_kind(method)} trains "
                              "in one process (multi-GPU training would need accelerate); use 1")
    for method in train.get("methods", []):
        followed = config[method].get("minibatches_of") if method_kind(method) == "adamw" else None
        if followed and followed not in train.get("methods", []):
            raise ConfigError(f"config error: {method}.minibatches_of = {followed!r} is not allowed; allowed: a "
                              f"method in train.methods ({', '.join(train['methods'])})")


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`overlay` layered on `base` as Snakemake layers later --configfile files: mappings merge key by
    key, any other value (lists included) replaces."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(paths: str | Path | list[str | Path], schema: str | Path) -> dict[str, Any]:
    """Validated config of one file, or of several layered in order (`snakemake --configfile A B`)."""
    config: dict[str, Any] = {}
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        layer = read_yaml(path, "a workflow config (YAML mapping)") or {}
        if not isinstance(layer, dict):
            raise ConfigError(f"{path}: expected a YAML mapping, got {type(layer).__name__}")
        config = merge(config, layer)
    return validate_config(config, schema)


SCHEMA = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"
"""The workflow's config schema in this checkout: every stage's slice is validated against it too."""


@functools.cache
def _schema() -> dict[str, Any]:
    return read_yaml(SCHEMA, "the config schema")


def schema_at(pointer: str) -> dict[str, Any]:
    """A copy of the schema of the config at a dotted path: `evaluate.kl`; `*` is any key of a mapping
    (`tasks.*`: one task), `$defs.es` a method's section."""
    root = _schema()
    if pointer.startswith("$defs."):
        return copy.deepcopy(root["$defs"][pointer.removeprefix("$defs.")])
    node = root
    for key in pointer.split("."):
        node = node["additionalProperties"] if key == "*" else node["properties"][key]
    return copy.deepcopy(node)


def slice_schema(*parts: str) -> dict[str, Any]:
    """The schema of a stage's config slice, built as its rule builds the slice: each part a section whose
    keys the slice holds (`geometry.probes`) or `section:key`, one key of it (`geometry:variants_per_pass`).
    A single section is its own schema (its conditions included)."""
    if len(parts) == 1 and ":" not in parts[0]:
        out = schema_at(parts[0])
    else:
        out = {"type": "object", "additionalProperties": False, "properties": {}, "required": []}
        for part in parts:
            pointer, _, key = part.partition(":")
            section = schema_at(pointer)
            keys = [key] if key else list(section["properties"])
            out["properties"].update({k: section["properties"][k] for k in keys})
            out["required"] += [k for k in section.get("required", []) if k in keys]
    return {**out, "$defs": _schema()["$defs"]}


def validate_slice(cfg: Any, schema: dict[str, Any], where: str, option: str = "--cfg") -> Any:
    """Fill schema defaults into a stage's config slice in place; ConfigError naming the option and the key
    (`where`: the slice's place in a workflow config, as the message shows it)."""
    error = _first_error(cfg, schema)
    if error is not None:
        raise ConfigError(f"{option}: {_message(error, where)}")
    return cfg
