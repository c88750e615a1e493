"""The rows of the holdout benchmarks: snapshots of the hub datasets, and offline stand-ins.

`snapshot_holdout` saves the split a benchmark's lm-eval task evaluates, once, where the hub is reachable
(the workflow's local rule `holdout_snapshot`); the holdout jobs read it from disk.

Stand-ins: MMLU rows are (question, subject, choices, answer index), like `cais/mmlu`: word-category questions
the tiny model's warm-start teaches as pretraining knowledge (`esft.tasks.knowledge`); IFEval rows are (key,
prompt, instruction_id_list, kwargs), like `google/IFEval`, with instructions that lm-eval's own IFEval
code checks and that a tiny model can sometimes satisfy by chance (short, lower case, no comma, ...).
Both differ from every training task's generator, and no holdout item is ever a warm-start or training row.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from esft.errors import EsftError
from esft.evaluate.holdout import (LOCAL_FORMATS, RESOURCES, SNAPSHOT_KEYS, SNAPSHOT_MANIFEST, dataset_errors,
                                   resolve_task, snapshot_file)
from esft.io import atomic_path, write_json, write_jsonl
from esft.tasks.knowledge import knowledge_rows


def mmlu_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """`n` distinct four-choice knowledge questions from the holdout half (`esft.tasks.knowledge`)."""
    return knowledge_rows(n, random.Random(f"holdout-mmlu-{seed}"), "holdout")


TOPICS = ["the sea", "a cat", "rain", "the moon", "bread", "a garden", "winter", "a train", "music", "a river"]
KEYWORDS = ["yes", "sun", "cat", "red", "one"]

INSTRUCTION_IDS = ["punctuation:no_comma", "change_case:english_lowercase", "keywords:existence",
                   "length_constraints:number_words", "length_constraints:number_sentences",
                   "detectable_format:json_format", "startend:quotation"]


def _instruction(instruction_id: str, rng: random.Random) -> tuple[str, dict[str, Any]]:
    """The sentence added to the prompt and the kwargs of lm-eval's checker for `instruction_id`."""
    match instruction_id:
        case "punctuation:no_comma":
            return "Do not use any commas.", {}
        case "change_case:english_lowercase":
            return "Your entire response should be in English, and in all lowercase letters.", {}
        case "keywords:existence":
            word = rng.choice(KEYWORDS)
            return f"Include the keyword {word}.", {"keywords": [word]}
        case "length_constraints:number_words":
            k = rng.randint(3, 12)
            return f"Answer with less than {k} words.", {"relation": "less than", "num_words": k}
        case "length_constraints:number_sentences":
            k = rng.randint(2, 4)
            return f"Your response should contain less than {k} sentences.", {"relation": "less than", "num_sentences": k}
        case "detectable_format:json_format":
            return "Wrap your entire output in JSON format.", {}
        case "startend:quotation":
            return "Wrap your entire response with double quotation marks.", {}
    raise EsftError(f"holdout ifeval: no stand-in for instruction {instruction_id!r}")


def ifeval_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """`n` distinct short instruction prompts (one or two instructions each), in `google/IFEval`'s schema."""
    rng = random.Random(f"holdout-ifeval-{seed}")
    rows: dict[str, dict[str, Any]] = {}
    for _ in range(100 * n):
        chosen = rng.sample(INSTRUCTION_IDS, rng.randint(1, 2))
        parts = [_instruction(i, rng) for i in chosen]
        prompt = " ".join([f"Write about {rng.choice(TOPICS)}."] + [text for text, _ in parts])
        row = {"key": 1000 + len(rows), "prompt": prompt, "instruction_id_list": chosen,
               "kwargs": [kwargs for _, kwargs in parts]}
        rows.setdefault(prompt, row)
        if len(rows) == n:
            return list(rows.values())
    raise EsftError(f"holdout ifeval: the generator yields fewer than {n} distinct prompts")


GENERATORS: dict[str, Callable[[int, int], list[dict[str, Any]]]] = {"mmlu": mmlu_rows, "ifeval": ifeval_rows}


def write_holdout_data(benchmark: str, cfg: dict[str, Any], out: str | Path) -> Path:
    """Write `out` (jsonl) and a manifest next to it (`<name>.manifest.json`: count, seed, sha256)."""
    if benchmark not in GENERATORS:
        raise EsftError(f"holdout-data: no stand-in generator for {benchmark!r}; allowed: {', '.join(GENERATORS)}")
    rows = GENERATORS[benchmark](cfg["n"], cfg["seed"])
    out = Path(out)
    write_jsonl(out, rows)
    write_json(out.with_suffix(".manifest.json"), {"benchmark": benchmark, "n": len(rows), "seed": cfg["seed"],
                                                  "sha256": hashlib.sha256(out.read_bytes()).hexdigest()})
    return out


def snapshot_holdout(benchmark: str, cfg: dict[str, Any], out: str | Path) -> Path:
    """Save the evaluated split of `benchmark`'s hub dataset (cfg: dataset, config_name, revision) as
    `<out>/<split>.parquet`, with `<out>/manifest.json` (what it is of, rows, sha256).

    A gated dataset's token is read from the environment (HF_TOKEN) by `datasets` itself.
    """
    from datasets import load_dataset

    task = resolve_task(benchmark, cfg, RESOURCES)
    if cfg["source"] != "hf" or cfg["dataset"] in LOCAL_FORMATS or task.is_group:
        raise EsftError(f"holdout-snapshot {benchmark}: only a hub dataset evaluated as one task has a snapshot "
                        f"(source hf, a hub id; not protocol loglikelihood, which runs lm-eval's mmlu group)")
    try:
        rows = load_dataset(cfg["dataset"], cfg.get("config_name"), split=task.split, revision=cfg.get("revision"))
    except dataset_errors() as err:
        raise EsftError(f"holdout-snapshot {benchmark}: {cfg['dataset']} (config {cfg.get('config_name')}, revision "
                        f"{cfg.get('revision')}) cannot be loaded ({type(err).__name__}: "
                        f"{(str(err).splitlines() or [''])[0][:300]}): run where the hub is reachable, with HF_TOKEN "
                        "in the environment for a gated dataset") from None
    path = snapshot_file(out, task.split)
    with atomic_path(path) as tmp:
        rows.to_parquet(str(tmp))
    write_json(Path(out) / SNAPSHOT_MANIFEST, {
        "benchmark": benchmark, **{key: cfg.get(key) for key in SNAPSHOT_KEYS}, "split": task.split,
        "rows": len(rows), "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    return path
