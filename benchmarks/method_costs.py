"""One ES iteration, one LBES iteration (equal population and prompt batch) and one GRPO step, as JSON lines.

Each method trains `--steps` steps through its own `train(job)` (the code the workflow runs) on the same
base model and prompts, each in a fresh process; every line reports the median per-step wall time
(run.jsonl `seconds`, model loading excluded) and the step's cost in the fields every method logs:
rollouts (completions generated), generated tokens and prompt tokens processed (prefill-only scoring
included). ES generates greedily with every member on every prompt (N·B rollouts); LBES samples n
completions per prompt with θ once (B·n rollouts) and scores the kept ones by prefill with every
member; a GRPO step samples `num_generations` completions per prompt and backpropagates through them.

    python benchmarks/method_costs.py --base results/default/model/base --task countdown \
        --data results/default/data/countdown
    python benchmarks/method_costs.py        # builds a warm-started tiny model and countdown rows first

A finished default run also answers the LBES paper's time-to-accuracy question on the run it shows:
`--results results/default` adds, for every run, the wall time until its training reward first
reached 90% of its own best (a per-run criterion, since ES fitness and LBES sampled reward differ).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def _prepare(args: argparse.Namespace, root: Path) -> tuple[str, Path]:
    """(base, data dir): the given ones, or a freshly warm-started tiny model and seeded task rows."""
    if args.base and args.data:
        return args.base, Path(args.data)
    from esft.models import build_base_model
    from esft.tasks.prepare import prepare_task

    data = root / "data"
    prepare_task(args.task, {"source": "synthetic", "seed": 1, "n_train": args.prompts, "n_test": 8,
                             "max_new_tokens": args.max_new_tokens}, data)
    build_base_model("tiny", root / "base", {"warmstart_steps": args.warmstart_steps})
    return str(root / "base"), data


def _configs(args: argparse.Namespace) -> dict[str, dict]:
    common = {"seed": 0, "checkpoint_every": 1000}
    return {
        "es": {**common, "population": args.population, "sigma": 0.01, "alpha": 0.005, "iterations": args.steps,
               "batch_size": args.prompts, "mode": args.es_mode},
        "lbes": {**common, "population": args.population, "sigma": 0.01, "alpha": 0.005, "iterations": args.steps,
                 "batch_size": args.prompts, "n_samples": args.samples, "temperature": 1.0,
                 "k_var": args.prompts, "k": 1},
        "grpo": {**common, "learning_rate": 1e-4, "max_steps": args.steps, "num_generations": args.samples,
                 "per_device_train_batch_size": args.prompts * args.samples},
    }


def _run_method(method: str, cfg: dict, base: str, data: Path, args: argparse.Namespace, out: Path) -> dict:
    """Train in a fresh process (no shared warm caches), then summarise its run.jsonl."""
    cmd = [sys.executable, "-m", "esft.cli", "--threads", str(args.threads), "--log-level", "WARNING", "train",
           "--method", method, "--task", args.task, "--run-id", f"{method}/bench/1-{args.task}", "--base", base,
           "--data", str(data), "--task-cfg", json.dumps({"max_new_tokens": args.max_new_tokens}),
           "--cfg", json.dumps(cfg), "--out", str(out)]
    subprocess.run(cmd, check=True)
    records = [json.loads(line) for line in (out / "run.jsonl").read_text().splitlines()]
    timed = records[1:] or records  # the first step pays one-off warm-up costs
    return {
        "method": method,
        "steps": len(records),
        "seconds_per_step": statistics.median(r["seconds"] for r in timed),
        **{f"{key}_per_step": statistics.median(r[key] for r in timed)
           for key in ("rollouts", "tokens", "prompt_tokens")},
        "config": cfg,
    }


def time_to_reward(results: Path, fraction: float) -> list[dict]:
    """Per training run of a finished workflow: wall time until its reward first reached `fraction` of
    its best, and its totals (seconds, rollouts, generated tokens)."""
    rows = []
    for run in sorted((results / "train").glob("*/*/*/run.jsonl")):
        records = [json.loads(line) for line in run.read_text().splitlines()]
        rewards = [r["reward_mean"] for r in records]
        low, best = min(rewards), max(rewards)
        target = low + fraction * (best - low)
        elapsed, reached = 0.0, None
        for r in records:
            elapsed += r["seconds"]
            if reached is None and r["reward_mean"] >= target:
                reached = elapsed
        rows.append({"run": str(run.parent.relative_to(results / "train")), "reward_first": rewards[0],
                     "reward_best": best, f"seconds_to_{int(fraction * 100)}pct": reached,
                     "seconds_total": sum(r["seconds"] for r in records),
                     "rollouts_total": sum(r["rollouts"] for r in records),
                     "tokens_total": sum(r["tokens"] for r in records)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", help="base-model directory (default: build a warm-started tiny model)")
    p.add_argument("--data", help="the task's data directory with train.jsonl (default: seeded rows)")
    p.add_argument("--task", default="countdown")
    p.add_argument("--prompts", type=int, default=16, help="prompt batch B of every method")
    p.add_argument("--population", type=int, default=16, help="N of ES and λ of LBES")
    p.add_argument("--samples", type=int, default=8, help="LBES n and GRPO num_generations")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--es-mode", default="inplace", choices=["inplace", "batched", "lowrank"])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmstart-steps", type=int, default=300)
    p.add_argument("--methods", nargs="+", default=["es", "lbes", "grpo"])
    p.add_argument("--results", type=Path, help="a finished workflow's results/<exp>: time to 90%% of best reward")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    env = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "threads": args.threads}
    with tempfile.TemporaryDirectory(prefix="esft-bench-") as tmp:
        root = Path(tmp)
        base, data = _prepare(args, root)
        configs = _configs(args)
        for method in args.methods:
            row = _run_method(method, configs[method], base, data, args, root / method)
            print(json.dumps({**row, "task": args.task, "prompts": args.prompts, **env}), flush=True)
    if args.results:
        for row in time_to_reward(args.results, 0.9):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
