"""A text corpus for the log-likelihood fitness (EA4LLM): rows {text} read once from a dataset.

Prepared by its own (local) workflow rule, so training jobs on compute nodes never touch the hub.
`training_texts` gives the texts a pretraining run scores, whatever its method (ES, AdamW).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from esft.errors import EsftError
from esft.io import read_jsonl, write_json, write_jsonl
from esft.tasks.base import Task
from esft.tasks.hub import load_split

log = logging.getLogger(__name__)


def prepare_corpus(cfg: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """Write the first `n_texts` texts (of at least `min_chars` characters, whitespace-stripped) of the
    configured split to `out` as jsonl, and `<name>.manifest.json` beside it."""
    split = cfg.get("split", "train")
    field, min_chars, n = cfg.get("text_field", "text"), cfg.get("min_chars", 1), cfg["n_texts"]
    texts = []
    for index, raw in enumerate(load_split(cfg, split)):
        if field not in raw or not isinstance(raw[field], str):
            raise EsftError(f"corpus {cfg['dataset']!r} split {split!r}: row {index} has no text field {field!r}")
        text = raw[field].strip()
        if len(text) >= max(min_chars, 1):
            texts.append(text)
            if len(texts) == n:
                break
    if len(texts) < n:
        raise EsftError(f"corpus {cfg['dataset']!r} split {split!r}: {len(texts)} texts of >= {min_chars} "
                        f"characters, fewer than n_texts={n}")
    out = Path(out)
    write_jsonl(out, [{"text": t} for t in texts])
    manifest = {"corpus": {k: cfg.get(k) for k in ("dataset", "config_name", "revision", "data_files", "split",
                                                   "text_field", "min_chars", "n_texts")},
                "texts": len(texts), "characters": sum(map(len, texts)),
                "sha256": hashlib.sha256(out.read_bytes()).hexdigest()}
    write_json(out.with_suffix(".manifest.json"), manifest)
    log.info("corpus: %d texts, %d characters from %s", len(texts), manifest["characters"], cfg["dataset"])
    return manifest


def training_texts(corpus: str | Path | None, task: Task, rows: Sequence[dict[str, Any]], tokenizer) -> list[str]:
    """The texts a log-likelihood objective scores: the prepared corpus ({text} rows), or by default the
    task's train conversations (chat template) followed by their reference answers."""
    if corpus:
        return [row["text"] for row in read_jsonl(corpus)]
    return [tokenizer.apply_chat_template(task.messages(r), add_generation_prompt=True, tokenize=False)
            + task.reference(r) for r in rows]
