"""Real task rows from a Hugging Face dataset (or local json/parquet files through the same loader).

Raw rows are filtered (`where`), mapped into the task's row schema (`Task.from_raw`) and validated. A
bad row stops preparation naming split, row index and field, unless `skip_bad_rows` is set, in which
case it is counted. Train and test come either from two splits (`train_split`, `test_split`, slices
allowed: `train[:200]`) or from one split (`split`) divided disjointly by a seeded permutation.
Randomness uses a local `random.Random(seed)`, never the global RNG (which would shift ES noise).
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from esft.errors import EsftError
from esft.tasks.base import RowError, Task

log = logging.getLogger(__name__)

MAX_SKIP_EXAMPLES = 5


@dataclass
class LoadReport:
    """What loading read and dropped, for the manifest."""

    filtered_rows: int = 0
    skipped_rows: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)


def load_split(cfg: dict[str, Any], split: str):
    import datasets

    try:
        return datasets.load_dataset(cfg["dataset"], name=cfg.get("config_name"), revision=cfg.get("revision"),
                                     data_files=cfg.get("data_files"), split=split)
    except Exception as err:  # the hub, the file system and arrow raise many unrelated types
        message = " ".join(str(err).split())[:300]
        raise EsftError(f"cannot load {cfg['dataset']!r} split {split!r}: {type(err).__name__}: {message}") from None


def read_split(task: Task, cfg: dict[str, Any], split: str, report: LoadReport) -> list[dict[str, Any]]:
    """Valid rows of one split in the task's schema, in dataset order."""
    ds = load_split(cfg, split)
    report.fingerprints[split] = getattr(ds, "_fingerprint", "")
    where = cfg.get("where") or {}
    rows = []
    for index, raw in enumerate(ds):
        try:
            missing = [key for key in where if raw.get(key) is None]
            if missing:
                raise RowError(f"row {index}: missing field {missing[0]!r}")
            if any(raw[key] != value for key, value in where.items()):
                report.filtered_rows += 1
                continue
            row = task.from_raw(raw, index)
            task.validate_row(row, index)
        except RowError as err:
            if not cfg.get("skip_bad_rows", False):
                raise RowError(f"task {task.name}: split {split!r}: {err}") from None
            report.skipped_rows += 1
            if len(report.skipped_examples) < MAX_SKIP_EXAMPLES:
                report.skipped_examples.append(f"{split}: {err}")
            continue
        rows.append(row)
    return rows


def _take(task: Task, rows: list[dict[str, Any]], n: int, what: str, stratify: str | None,
          rng: random.Random) -> list[dict[str, Any]]:
    """The first `n` rows, or with `stratify` n/k rows of each of the k values of that field, drawn by `rng`."""
    if not stratify:
        if len(rows) < n:
            raise EsftError(f"task {task.name}: {what} has {len(rows)} usable rows, fewer than the {n} asked for "
                            "(check where, skip_bad_rows and the split slice)")
        return rows[:n]
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for index, row in enumerate(rows):
        if row.get(stratify) is None:
            raise RowError(f"task {task.name}: {what}: row {index}: missing field {stratify!r} (train_stratify)")
        groups[row[stratify]].append(row)
    if n % len(groups):
        raise EsftError(f"task {task.name}: n_train={n} is not divisible by the {len(groups)} values of {stratify!r}")
    per = n // len(groups)
    chosen = []
    for value in sorted(groups, key=str):
        group = groups[value][:]
        if len(group) < per:
            raise EsftError(f"task {task.name}: {what} has {len(group)} rows with {stratify}={value!r}, fewer than {per}")
        rng.shuffle(group)
        chosen.extend(group[:per])
    return chosen


def load_rows(task: Task, cfg: dict[str, Any]) -> tuple[list[dict], list[dict], LoadReport]:
    """(train, test, report) for a `source: hf` task config."""
    if task.real_dataset is None:
        raise EsftError(f"task {task.name} has no real dataset; use source: synthetic or embedded")
    report = LoadReport()
    rng = random.Random(cfg.get("seed", 0))
    stratify = cfg.get("train_stratify")
    if "split" in cfg:
        if "train_split" in cfg or "test_split" in cfg:
            raise EsftError(f"task {task.name}: give either split or train_split and test_split, not both")
        rows = read_split(task, cfg, cfg["split"], report)
        rng.shuffle(rows)
        train = _take(task, rows, cfg["n_train"], f"split {cfg['split']!r}", stratify, rng)
        chosen = {id(r) for r in train}
        test = _take(task, [r for r in rows if id(r) not in chosen], cfg["n_test"],
                     f"split {cfg['split']!r} after the train rows", None, rng)
    elif "train_split" in cfg and "test_split" in cfg:
        train = _take(task, read_split(task, cfg, cfg["train_split"], report), cfg["n_train"],
                      f"split {cfg['train_split']!r}", stratify, rng)
        test = _take(task, read_split(task, cfg, cfg["test_split"], report), cfg["n_test"],
                     f"split {cfg['test_split']!r}", None, rng)
    else:
        raise EsftError(f"task {task.name}: source hf needs split, or train_split and test_split")
    return train, test, report
