"""Prepare a task's train/test splits as jsonl plus a manifest (source, counts, sha256)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from esft.io import write_json, write_jsonl
from esft.errors import EsftError
from esft.tasks import get_task

log = logging.getLogger(__name__)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare_task(name: str, cfg: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Write `train.jsonl`, `test.jsonl` and `manifest.json` for task `name` under `out_dir`."""
    task = get_task(name)
    source = cfg.get("source", "synthetic")
    if source in ("synthetic", "embedded"):
        train, test = task.stand_in(cfg["n_train"], cfg["n_test"], cfg.get("seed", 0))
    else:
        raise EsftError(f"task {name}: unknown source {source!r}; allowed: synthetic, embedded")
    for split, rows in (("train", train), ("test", test)):
        for index, row in enumerate(rows):
            task.validate_row(row, index)
        if not rows:
            raise EsftError(f"task {name}: the {split} split is empty")
    out = Path(out_dir)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "test.jsonl", test)
    manifest = {
        "task": name,
        "source": source,
        "seed": cfg.get("seed", 0),
        "counts": {"train": len(train), "test": len(test)},
        "sha256": {s: _sha256(out / f"{s}.jsonl") for s in ("train", "test")},
        "skipped_rows": 0,
    }
    write_json(out / "manifest.json", manifest)
    log.info("%s: %d train, %d test rows from %s", name, len(train), len(test), source)
    return manifest
