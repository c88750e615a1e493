"""Where does the embedded default reproduce the paper's regime? A sweep of ES and GRPO settings.

Each point overrides keys of the `es` and `grpo` sections of a workflow config (default
`config/config.yaml`) and trains both methods' sequential chains from the base model of a finished run
(`--results`, whose prepared data and base model it reads), once per seed. Chains are cached under
`--work` by (method, overrides, seed), so points that share a method's settings share its runs. Per point,
seed and stage it prints one JSON line:

- each method's test accuracy on the stage's task before (the previous stage, or the base) and after;
- ‖θ_k − θ₀‖ of both, their ratio and cosine (Table 3);
- each method's mean incremental KL(π_{k−1} ‖ π_k) over the tasks the stage does not train (Figure 2);
- training seconds of both;

then one `point` line per point with the paper's learning and geometry claims judged on every seed
(the thresholds of `geometry.findings`), which is how the README's settings were chosen:

    python benchmarks/default_sweep.py --results results/default --seeds 0 1 2 \\
        --point grpo.learning_rate=1e-4 --point grpo.learning_rate=5e-5,grpo.max_steps=80

A point `""` runs the config as it is. Training is deterministic, so a rerun reuses every cached chain.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from esft.config import validate_config
from esft.evaluate.accuracy import evaluate_tasks
from esft.evaluate.kl import kl_on_tasks
from esft.geometry.deltas import compare_deltas
from esft.geometry.variants import base_weights
from esft.methods import train
from esft.models import load_model
from esft.runs import TrainJob

METHODS = ("es", "grpo")


def parse_point(text: str) -> dict[str, dict[str, Any]]:
    """`es.alpha=0.01,grpo.max_steps=80,es@math.iterations=90` -> {"es": {"alpha": 0.01, "@math": {"iterations":
    90}}, "grpo": {"max_steps": 80}}: METHOD@TASK.KEY overrides the key on one task (as train.overrides)."""
    point: dict[str, dict[str, Any]] = {m: {} for m in METHODS}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        method, at, task = method.partition("@")
        if not sep or not dot or method not in METHODS:
            raise SystemExit(f"--point: expected METHOD[@TASK].KEY=VALUE with METHOD in {METHODS}, got {item!r}")
        target = point[method].setdefault(f"@{task}", {}) if at else point[method]
        try:  # JSON reads 1e-4 as a number, YAML 1.1 as a string
            target[name] = json.loads(value)
        except json.JSONDecodeError:
            target[name] = yaml.safe_load(value)
    return point


def chain(method: str, overrides: dict[str, Any], seed: int, config: dict[str, Any], results: Path,
          work: Path) -> list[Path]:
    """The method's sequential checkpoints with `overrides` in `seed`, trained once and cached."""
    key = hashlib.sha256(json.dumps([method, overrides, seed], sort_keys=True).encode()).hexdigest()[:12]
    tasks = config["train"]["sequential"]
    outs, init = [], None
    for k, task in enumerate(tasks, 1):
        own = config["train"].get("overrides", {}).get(task, {}).get(method, {})
        cfg = {**config[method], **own, **{k: v for k, v in overrides.items() if not k.startswith("@")},
               **overrides.get(f"@{task}", {}), "seed": seed}
        out = work / f"{method}-{key}" / f"{k}-{task}"
        if not (out / "weights.safetensors").exists():
            train(TrainJob(method=method, task=task, base=str(results / "model" / "base"),
                           data=results / "data" / task, task_cfg=config["tasks"][task], cfg=cfg, out=out,
                           init=init, run_id=f"{method}/sequential/{k}-{task}",
                           dtype="float32" if method == "grpo" else config["runtime"]["dtype"]))
        outs.append(out)
        init = str(out / "weights.safetensors")
    return outs


def measure(config: dict[str, Any], results: Path, runs: dict[str, list[Path]]) -> list[dict[str, Any]]:
    """One row per sequential stage: accuracy before/after, norms, ratio, cosine and off-task KL."""
    tasks = config["train"]["sequential"]
    base = str(results / "model" / "base")
    data = {t: results / "data" / t for t in config["tasks"]}
    model, tokenizer = load_model(base)
    theta0 = base_weights(model)
    batch = config["evaluate"]["generation_batch_size"]
    kl_cfg = config["evaluate"]["kl"]

    def accuracy(m, task: str) -> float:
        return evaluate_tasks(m, tokenizer, {task: data[task]}, config["tasks"], batch)[0][task]["accuracy"]

    rows = []
    for k, task in enumerate(tasks, 1):
        row: dict[str, Any] = {"stage": k, "task": task}
        pairs = {f"sequential/{k}-{task}": tuple(runs[m][k - 1] / "weights.safetensors" for m in METHODS)}
        geometry = compare_deltas(theta0, pairs, METHODS).iloc[0]
        row.update(ratio=float(geometry["ratio"]), cosine=float(geometry["cosine"]))
        for m in METHODS:
            weights = runs[m][k - 1] / "weights.safetensors"
            previous = None if k == 1 else runs[m][k - 2] / "weights.safetensors"
            after, _ = load_model(base, weights)
            reference, _ = load_model(base, previous)
            off = {t: data[t] for t in config["tasks"] if t != task}
            kl = kl_on_tasks(reference, after, tokenizer, off, config["tasks"], kl_cfg)[0]
            records = [json.loads(x) for x in (runs[m][k - 1] / "run.jsonl").read_text().splitlines() if x]
            row.update({f"{m}_before": accuracy(reference, task), f"{m}_after": accuracy(after, task),
                        f"{m}_norm": float(geometry[f"norm_{m}"]),
                        f"{m}_kl_off": sum(v["kl"] for v in kl.values()) / len(kl),
                        f"{m}_seconds": sum(r["seconds"] for r in records)})
        rows.append(row)
    return rows


def judge(rows: list[dict[str, Any]], findings: dict[str, Any]) -> dict[str, bool]:
    """The paper's claims on one seed's stages (geometry.findings thresholds)."""
    need = min(findings["gain_tasks_min"], len(rows))
    gains = {m: sum(r[f"{m}_after"] - r[f"{m}_before"] >= findings["gain_min"] for r in rows) for m in METHODS}
    close = sum(abs(r["es_after"] - r["grpo_after"]) <= findings["accuracy_gap_max"] for r in rows)
    return {"es_gains": gains["es"] >= need, "grpo_gains": gains["grpo"] >= need, "comparable": close >= need,
            "norm_ratio": min(r["ratio"] for r in rows) >= findings["norm_ratio_min"],
            "orthogonal": max(abs(r["cosine"]) for r in rows) <= findings["cosine_max"],
            "es_kl_broader": all(r["es_kl_off"] > r["grpo_kl_off"] for r in rows)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results/default", help="a finished run: its data/ and model/base")
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--schema", default="config/schema.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--point", action="append", default=None, help="METHOD.KEY=VALUE,... (repeatable)")
    ap.add_argument("--work", default="results/sweep", help="cache of the trained chains")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (one process per core: seeds apart)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config = validate_config(yaml.safe_load(Path(args.config).read_text()), args.schema)
    torch.set_num_threads(args.threads)
    results, work = Path(args.results), Path(args.work)
    for text in args.point or [""]:
        point, verdicts = parse_point(text), []
        for seed in args.seeds:
            start = time.perf_counter()
            runs = {m: chain(m, point[m], seed, config, results, work) for m in METHODS}
            rows = measure(config, results, runs)
            for row in rows:
                print(json.dumps({"kind": "stage", "point": text, "seed": seed, **row}), flush=True)
            verdicts.append(judge(rows, config["geometry"]["findings"]))
            print(json.dumps({"kind": "seed", "point": text, "seed": seed, **verdicts[-1],
                              "seconds": round(time.perf_counter() - start, 1)}), flush=True)
        claims = {c: all(v[c] for v in verdicts) for c in verdicts[0]}
        print(json.dumps({"kind": "point", "point": text, "seeds": args.seeds, **claims,
                          "all_hold": all(claims.values())}), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
