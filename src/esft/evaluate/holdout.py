"""Holdout benchmarks (MMLU, IFEval; paper Table 2) of one checkpoint through lm-eval.

The checkpoint is passed to lm-eval in memory (`HFLM(pretrained=<model>)`), prompts go through the
chat template, and no response cache is used (lm-eval's cache keys ignore the weights, so it would
serve one checkpoint's answers to the next). MMLU runs in the paper's generative protocol (our task
YAML under resources/lm_eval) or as lm-eval's log-likelihood `mmlu`; IFEval is lm-eval's own `ifeval`
task and scoring. Where the rows come from (hub id and revision, or local files) is laid over each
task's YAML at run time through a YAML that `include`s it: lm-eval 0.4.13 builds a dict spec as a new
inline task without the registered YAML, so overrides cannot be passed as a dict. In the workflow a hub
dataset is read from its snapshot (`esft holdout-snapshot`, a local rule), never from the hub on the node
that evaluates.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pandas as pd
import yaml

from esft.errors import EsftError
from esft.labels import checkpoint_fields, seeded_pivot
from esft.io import read_json, write_json, write_jsonl

log = logging.getLogger(__name__)

RESOURCES = Path(__file__).resolve().parents[3] / "resources" / "lm_eval"
"""Our lm-eval task YAMLs (in a source checkout; the workflow passes the path explicitly)."""

HEADLINE = {"mmlu": "acc", "ifeval": "prompt_level_strict_acc"}
"""The number the paper reports per benchmark."""

SEEDS = {"random_seed": 0, "numpy_random_seed": 1234, "torch_random_seed": 1234, "fewshot_random_seed": 1234}
"""lm-eval's default seeds, passed explicitly so that the record states them (greedy decoding uses none)."""
LANGDETECT_SEED = 0
LOCAL_FORMATS = ("json", "parquet", "csv")
SNAPSHOT_MANIFEST = "manifest.json"
SNAPSHOT_KEYS = ("dataset", "config_name", "revision")
"""What a snapshot of a hub dataset is of (`esft holdout-snapshot`), checked against the config."""


@dataclass(frozen=True)
class HoldoutTask:
    """The lm-eval task (or group) a benchmark config runs, and the YAML that defines it."""

    name: str
    yaml_path: Path
    split: str

    @property
    def is_group(self) -> bool:
        return self.split == ""


def lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def resolve_task(benchmark: str, cfg: dict[str, Any], tasks_dir: Path) -> HoldoutTask:
    """Which task YAML runs `benchmark` under `cfg` (protocol and prompt style for MMLU)."""
    if benchmark == "ifeval":
        return HoldoutTask("ifeval", lm_eval_tasks_dir() / "ifeval" / "ifeval.yaml", "train")
    if benchmark != "mmlu":
        raise EsftError(f"holdout: unknown benchmark {benchmark!r}; allowed: mmlu, ifeval")
    if cfg.get("protocol", "generative") == "loglikelihood":
        if cfg["source"] != "hf" or cfg.get("dataset", "cais/mmlu") != "cais/mmlu" or cfg.get("revision") \
                or cfg.get("data_files"):
            raise EsftError("holdout mmlu: protocol loglikelihood runs lm-eval's own `mmlu` group on cais/mmlu "
                            "as lm-eval defines it: use source hf without dataset, revision or data_files")
        return HoldoutTask("mmlu", lm_eval_tasks_dir() / "mmlu" / "default" / "_mmlu.yaml", "")
    name = "esft_mmlu_gen" if cfg.get("prompt_style", "paper") == "paper" else "esft_mmlu_gen_short"
    return HoldoutTask(name, Path(tasks_dir) / f"{name}.yaml", "test")


def snapshot_file(snapshot: str | Path, split: str) -> Path:
    """The parquet file of `split` in a snapshot directory of `esft holdout-snapshot`."""
    return Path(snapshot).resolve() / f"{split}.parquet"


def check_snapshot(snapshot: str | Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """The snapshot's manifest, if it holds the dataset, configuration and revision that `cfg` asks for."""
    manifest = read_json(Path(snapshot) / SNAPSHOT_MANIFEST)
    want = {key: cfg.get(key) for key in SNAPSHOT_KEYS}
    got = {key: manifest.get(key) for key in SNAPSHOT_KEYS}
    if got != want:
        raise EsftError(f"holdout: the snapshot in {snapshot} holds {got}, the config asks for {want}: "
                        "rerun `esft holdout-snapshot`")
    return manifest


def dataset_overrides(task: HoldoutTask, cfg: dict[str, Any], data: Path | None) -> dict[str, Any]:
    """Task-config keys that choose the rows: generated stand-in file, local files, a snapshot of a hub
    dataset (`data`: its directory) or the hub dataset itself."""
    if cfg["source"] == "synthetic":
        if data is None:
            raise EsftError("holdout: source synthetic needs the rows written by `esft holdout-data` (--data)")
        if not Path(data).is_file():
            raise EsftError(f"{data}: no such file (expected the rows written by `esft holdout-data`)")
        return {"dataset_path": "json", "dataset_name": None,
                "dataset_kwargs": {"data_files": {task.split: str(Path(data).resolve())}}}
    dataset = cfg["dataset"]
    if dataset in LOCAL_FORMATS:
        if not cfg.get("data_files"):
            raise EsftError(f"holdout: dataset {dataset} needs data_files (the {task.split} rows)")
        files = cfg["data_files"]
        files = files.get(task.split, files) if isinstance(files, dict) else files
        return {"dataset_path": dataset, "dataset_name": None, "dataset_kwargs": {"data_files": {task.split: files}}}
    if data is not None:
        check_snapshot(data, cfg)
        return {"dataset_path": "parquet", "dataset_name": None,
                "dataset_kwargs": {"data_files": {task.split: str(snapshot_file(data, task.split))}}}
    overrides: dict[str, Any] = {"dataset_path": dataset, "dataset_name": cfg.get("config_name")}
    if cfg.get("revision"):
        overrides["dataset_kwargs"] = {"revision": cfg["revision"]}
    return overrides


def is_snapshot(cfg: dict[str, Any], data: Path | None) -> bool:
    """Whether `data` is a snapshot of the hub dataset `cfg` names (rather than stand-in rows or nothing)."""
    return data is not None and cfg["source"] == "hf" and cfg["dataset"] not in LOCAL_FORMATS


def _unreachable(benchmark: str, cfg: dict[str, Any], err: Exception) -> EsftError:
    detail = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}"
    if cfg["source"] == "synthetic" or cfg["dataset"] in LOCAL_FORMATS:
        files = "the rows of `esft holdout-data`" if cfg["source"] == "synthetic" else f"data_files {cfg['data_files']!r}"
        return EsftError(f"holdout {benchmark}: {files} cannot be loaded ({detail}): check the path")
    return EsftError(
        f"holdout {benchmark}: dataset {cfg['dataset']!r} (config {cfg.get('config_name')}, revision "
        f"{cfg.get('revision')}) cannot be reached ({detail}). To run offline, save its rows where the hub is "
        f"reachable (datasets.load_dataset(...).to_parquet(PATH)) and set holdout.benchmarks.{benchmark}.dataset: "
        f"parquet with data_files: PATH, or fill the Hugging Face datasets cache (HF_DATASETS_CACHE) beforehand")


def dataset_errors() -> tuple[type[BaseException], ...]:
    """What loading a dataset raises when the hub or a file cannot be reached (OSError covers
    ConnectionError, FileNotFoundError, datasets' DatasetNotFoundError and huggingface_hub's HTTP errors)."""
    from datasets.exceptions import DatasetGenerationError

    return (OSError, DatasetGenerationError)


def _require_punkt_tab() -> None:
    """IFEval's scoring needs punkt_tab; without it lm-eval tries a download at import and fails late."""
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        raise EsftError("holdout ifeval: NLTK punkt_tab (English) is not on NLTK's data path: write it offline "
                        "with `esft nltk-data --out DIR` and pass --nltk-data DIR (or set NLTK_DATA=DIR)") from None


@functools.cache
def _env_info() -> dict[str, Any]:
    """lm-eval's environment record (torch's collect_env: pip and git subprocesses, about 0.5 s of CPU),
    collected once per process: `simple_evaluate` collects it on every call, and the probes make many."""
    from lm_eval.loggers.utils import add_env_info

    info: dict[str, Any] = {}
    add_env_info(info)
    return info


def run_holdout(model, tokenizer, benchmark: str, cfg: dict[str, Any], *, data: Path | None = None,
                tasks_dir: Path | None = None, batch_size: int = 16) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(record, samples) of one benchmark on an in-memory HF model, through lm-eval's HFLM."""
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    record, samples = evaluate_lm(lm, benchmark, cfg, data=data, tasks_dir=tasks_dir)
    return {**record, "batch_size": batch_size}, samples


def evaluate_lm(lm, benchmark: str, cfg: dict[str, Any], *, data: Path | None = None,
                tasks_dir: Path | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(record, samples) of one benchmark on any lm-eval LM. The record holds every metric, the task
    versions, lm-eval's version, the sample count, the seeds and where the rows came from."""
    from langdetect import DetectorFactory
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    task = resolve_task(benchmark, cfg, tasks_dir or RESOURCES)
    if benchmark == "ifeval":
        _require_punkt_tab()
    overrides = {} if task.is_group else dataset_overrides(task, cfg, data)
    DetectorFactory.seed = LANGDETECT_SEED  # langdetect (IFEval's English checks) draws random numbers
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="esft-lm-eval-") as tmp:
        if task.is_group:
            manager = TaskManager(include_path=str(task.yaml_path.parent), include_defaults=False)
        else:
            run_yaml = {"include": str(task.yaml_path.resolve()), "task": task.name, **overrides}
            (Path(tmp) / f"{task.name}.yaml").write_text(yaml.safe_dump(run_yaml, sort_keys=True), encoding="utf-8")
            manager = TaskManager(include_path=tmp, include_defaults=False)
        try:
            loaded = manager.load([task.name])
        except dataset_errors() as err:
            raise _unreachable(benchmark, cfg, err) from None
        top = loaded["groups"][task.name] if task.is_group else loaded["tasks"][task.name]
        max_new = cfg.get("max_new_tokens")
        # no use_cache (lm-eval's response cache ignores the weights), no request cache
        with mock.patch("lm_eval.evaluator.add_env_info", lambda results: results.update(_env_info())):
            results = simple_evaluate(
                model=lm, tasks=[top], task_manager=manager, apply_chat_template=True, limit=cfg.get("limit"),
                gen_kwargs={"max_gen_toks": max_new} if max_new else None, log_samples=True,
                use_cache=None, cache_requests=False, **SEEDS,
            )
    wall = time.perf_counter() - start
    metrics = {key.split(",")[0]: float(value) for key, value in results["results"][task.name].items()
               if "," in key and isinstance(value, (int, float))}
    n = sum(v["effective"] for v in results["n-samples"].values())
    record = {
        "benchmark": benchmark,
        "task": task.name,
        "headline": {"metric": HEADLINE[benchmark], "value": metrics[HEADLINE[benchmark]]},
        "metrics": metrics,
        "n": n,
        "n_samples": results["n-samples"],
        "task_versions": results["versions"],
        "lm_eval_version": importlib.metadata.version("lm_eval"),
        "seeds": {**SEEDS, "langdetect_seed": LANGDETECT_SEED},
        "use_cache": results["config"]["use_cache"],
        "config": cfg,
        "dataset": overrides or {"dataset_path": "cais/mmlu", "as": "lm-eval's mmlu group"},
        **({"snapshot": read_json(Path(data) / SNAPSHOT_MANIFEST)} if is_snapshot(cfg, data) else {}),
        "generation_kwargs": {t: c.get("generation_kwargs") for t, c in results["configs"].items()},
        "chat_template": True,
        "wall_s": round(wall, 3),
    }
    samples = [{"task": name, "doc_id": s["doc_id"], "target": s["target"], "response": s["filtered_resps"],
                **{m: s[m] for m in s if m in metrics}}
               for name, task_samples in results["samples"].items() for s in task_samples]
    log.info("%s: %s = %.4f on %d samples (%.1fs)", benchmark, HEADLINE[benchmark], metrics[HEADLINE[benchmark]], n, wall)
    return record, samples


def write_holdout(out: str | Path, record: dict[str, Any], samples: list[dict[str, Any]]) -> None:
    """`<benchmark>.json` and its samples beside it (`<benchmark>.samples.jsonl`)."""
    out = Path(out)
    write_json(out, record)
    write_jsonl(out.with_suffix(".samples.jsonl"), samples)


def collect_holdout(files: dict[str, str | Path]) -> pd.DataFrame:
    """Tidy table (checkpoint, method, schedule, stage, trained_task, benchmark, metric, value, n) from
    `LABEL/benchmark` -> record files; stderr entries are left in the JSON records."""
    rows = []
    for key, path in files.items():
        label = key.rsplit("/", 1)[0]
        record = read_json(path)
        for metric, value in record["metrics"].items():
            if not metric.endswith("_stderr"):
                rows.append({"checkpoint": label, **checkpoint_fields(label), "benchmark": record["benchmark"],
                             "metric": metric, "value": value, "n": record["n"]})
    return pd.DataFrame(rows).astype({"seed": "Int64"})


def holdout_matrix(tidy: pd.DataFrame) -> pd.DataFrame:
    """Paper Table 2: one row per checkpoint (base first), one column per benchmark metric, the
    headline metric of each benchmark first."""
    keys = ["method", "schedule", "stage", "trained_task"]
    tidy = tidy.assign(column=tidy["benchmark"] + " " + tidy["metric"])
    wide = seeded_pivot(tidy, keys, "column", "value")
    headline = [f"{b} {m}" for b, m in HEADLINE.items() if f"{b} {m}" in wide]
    rest = sorted(c for c in wide.columns if c not in keys and c != "seed" and c not in headline)
    wide = wide.assign(_o=wide["method"].ne("base")).sort_values(["_o", "method", "schedule", "stage", "seed"])
    return wide[keys + ["seed"] + headline + rest].reset_index(drop=True)
