"""Prepare a task's train/test splits as jsonl plus a manifest (source, revision, counts, sha256, skips)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from esft.errors import EsftError
from esft.io import write_json, write_jsonl
from esft.tasks import get_task
from esft.tasks.hub import LoadReport, load_rows

log = logging.getLogger(__name__)

SOURCES = ("synthetic", "embedded", "hf")
HF_KEYS = ("dataset", "config_name", "revision", "data_files", "split", "train_split", "test_split", "where",
           "train_stratify", "skip_bad_rows")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare_task(name: str, cfg: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Write `train.jsonl`, `test.jsonl` and `manifest.json` for task `name` under `out_dir`."""
    source = cfg.get("source", "synthetic")
    if "prompts" in cfg and (source == "hf" or cfg["prompts"] not in get_task(name).prompt_sets):
        raise EsftError(f"task {name}: prompts {cfg['prompts']!r} is not a prompt set of its source {source} "
                        f"(sets: {', '.join(get_task(name).prompt_sets) or 'none'})")
    task = get_task(name, **({"prompts": cfg["prompts"]} if "prompts" in cfg else {}))
    report = LoadReport()
    if source in ("synthetic", "embedded"):
        train, test = task.stand_in(cfg["n_train"], cfg["n_test"], cfg.get("seed", 0))
    elif source == "hf":
        if not cfg.get("dataset"):
            raise EsftError(f"task {name}: source hf needs a dataset (a hub id, or json/parquet with data_files)")
        train, test, report = load_rows(task, cfg)
    else:
        raise EsftError(f"task {name}: unknown source {source!r}; allowed: {', '.join(SOURCES)}")
    for split, rows in (("train", train), ("test", test)):
        for index, row in enumerate(rows):
            task.validate_row(row, index)
        if not rows:
            raise EsftError(f"task {name}: the {split} split is empty")
    prompts = {task.user_prompt(r) for r in train}
    overlap = sum(task.user_prompt(r) in prompts for r in test)
    if overlap:
        log.warning("%s: %d test prompts also appear in train (duplicates in the source)", name, overlap)
    out = Path(out_dir)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "test.jsonl", test)
    manifest = {
        "task": name,
        "source": source,
        "seed": cfg.get("seed", 0),
        **({"prompts": cfg["prompts"]} if "prompts" in cfg else {}),
        "counts": {"train": len(train), "test": len(test)},
        "sha256": {s: _sha256(out / f"{s}.jsonl") for s in ("train", "test")},
        "skipped_rows": report.skipped_rows,
        "skipped_examples": report.skipped_examples,
        "filtered_rows": report.filtered_rows,
        "test_prompts_in_train": overlap,
    }
    if source == "hf":
        manifest["hf"] = {k: cfg.get(k) for k in HF_KEYS}
        manifest["hf"]["fingerprints"] = report.fingerprints
    write_json(out / "manifest.json", manifest)
    log.info("%s: %d train, %d test rows from %s (%d bad rows skipped)", name, len(train), len(test), source,
             report.skipped_rows)
    return manifest
