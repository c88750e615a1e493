"""Population modes against the pure-inference limit, on the tiny default model (CPU), as JSON lines.

For each setting, `pure` is one generation of all N×B rows with the unperturbed model through the same
population decoder the batched modes use (`pure_hf`: the same rows in one HF `generate` call, for
reference). Each mode's number is a full ES iteration (`ESTrainer.step`: evaluate, shape, update),
median over `--iterations` after one warm-up, each mode in a fresh process. Peak RSS is taken after
the warm-up iteration, before any pure run; then every timed iteration is paired with a pure run just
before it, and `ratio_to_pure` is the median of the paired ratios, which holds up on a shared machine.
The random-init members tie, so shaping would zero the update: tied iterations shape seeded random
fitness instead, and the update is timed too. `batched` also reports `floor_ratio`: `pure` plus drawing
its N full-rank noise tensors plus reading its N member copies of the matrices once per new token at
this thread's measured stream bandwidth: the least time any full-rank batched evaluation could take.

    python benchmarks/population_modes.py                       # both settings, every mode
    python benchmarks/population_modes.py --settings a --modes batched lowrank
    python benchmarks/population_modes.py --device cuda --dtype bfloat16 --hidden 1024 --layers 24 ...
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import statistics
import subprocess
import sys
import time

import torch

SETTINGS = {
    # the conciseness study: few prompts per member, per-call overhead dominates
    "a": {"population": 30, "task": "conciseness", "prompts": 2, "max_new_tokens": 100},
    # a task shape: many prompts per member, compute dominates
    "b": {"population": 32, "task": "countdown", "prompts": 64, "max_new_tokens": 32},
}
MODES = ("pure", "pure_hf", "inplace", "batched", "lowrank")


def _setup(setting: dict, args: argparse.Namespace):
    from esft.methods.es.fitness import TaskFitness
    from esft.models import TinyModelConfig, build_tiny_model, build_tokenizer, supervised_warmstart, \
        warmstart_examples
    from esft.tasks import get_task
    from esft.tasks.conciseness import embedded_rows

    tokenizer = build_tokenizer()
    cfg = TinyModelConfig(hidden_size=args.hidden, intermediate_size=args.intermediate,
                          num_hidden_layers=args.layers, num_attention_heads=args.heads,
                          num_key_value_heads=args.kv_heads, head_dim=args.head_dim,
                          warmstart_steps=args.warmstart_steps)
    model = build_tiny_model(cfg, tokenizer)
    if args.warmstart_steps:
        supervised_warmstart(model, tokenizer, cfg, warmstart_examples(cfg, set()))
    model.to(device=args.device, dtype=getattr(torch, args.dtype)).eval()
    task = get_task(setting["task"])
    rows = (embedded_rows()["train"] if setting["task"] == "conciseness"
            else task.generate_rows(setting["prompts"], random.Random(0)))[: setting["prompts"]]
    # default: every N×B row in one pass (inplace: every prompt in one generate call), like `pure`
    rows_per_pass = args.generation_batch_size or setting["population"] * len(rows)
    fitness = TaskFitness(task, rows, tokenizer, setting["max_new_tokens"], generation_batch_size=rows_per_pass)
    return model, tokenizer, fitness


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pure(model, tokenizer, fitness, members: int, hf: bool) -> tuple[float, int]:
    """(seconds, generated tokens) of all members × prompts rows with the unperturbed model."""
    from esft.rollout import decode_completions, generate, stop_ids
    from esft.rollout.decoder import PopulationDecoder, SharedWeights

    prompts = fitness.prompt_ids
    device = next(model.parameters()).device
    _sync(device)
    start = time.perf_counter()
    if hf:
        rows = [p for _ in range(members) for p in prompts]
        tokens = generate(model, tokenizer, rows, fitness.max_new_tokens, batch_size=len(rows)).total_tokens
    else:
        stops = stop_ids(model, tokenizer)
        out = PopulationDecoder(model).generate(SharedWeights(model), members, prompts, fitness.max_new_tokens,
                                                tokenizer.pad_token_id, stops)
        tokens = decode_completions(tokenizer, out.reshape(-1, out.shape[-1]).tolist(), stops).total_tokens
    _sync(device)
    return time.perf_counter() - start, tokens


def _untie_shaping(trainer_module) -> None:
    """Shape seeded random fitness when every member ties, so each timed iteration applies a real update.

    Members of the random-init model all produce the same tokens, so shaping would give zero weights and
    the trainer would skip the update; the benchmark must time it like any other part of the iteration.
    """
    shape = trainer_module.member_weights
    gen = torch.Generator().manual_seed(0)

    def member_weights(fitness, shaping, antithetic):
        if len(set(fitness)) > 1:
            return shape(fitness, shaping, antithetic)
        return shape(torch.randn(len(fitness), generator=gen).tolist(), shaping, antithetic)

    trainer_module.member_weights = member_weights


def _stream_gb_per_s(nbytes: int, device: torch.device) -> float:
    """Best read bandwidth (GB/s) summing a fresh fp32 buffer of `nbytes`, twice over, on `device`."""
    buffers = [torch.ones(nbytes // 4, device=device) for _ in range(2)]
    best = float("inf")
    for _ in range(5):
        _sync(device)
        start = time.perf_counter()
        for b in buffers:
            b.sum()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best / 1e9


def _randn_seconds(count: int, device: torch.device) -> float:
    """Best time to draw `count` standard normals from a seeded generator on `device`."""
    gen = torch.Generator(device=device).manual_seed(0)
    best = float("inf")
    for _ in range(3):
        _sync(device)
        start = time.perf_counter()
        torch.randn(count, generator=gen, device=device)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def measure(name: str, mode: str, args: argparse.Namespace) -> dict:
    """One mode in one setting: median seconds per ES iteration (or per pure generation)."""
    import esft.methods.es.fitness as fitness_module
    import esft.methods.es.trainer as trainer_module
    from esft.methods.es import ESConfig
    from esft.methods.es.trainer import ESTrainer

    setting = SETTINGS[name]
    iterations, rank = args.iterations, args.rank
    model, tokenizer, fitness = _setup(setting, args)
    device = next(model.parameters()).device
    n = setting["population"]
    seconds, tokens, outside, paired, peak = [], 0, [], [], 0.0
    if mode.startswith("pure"):
        for i in range(iterations + 1):
            s, tokens = _pure(model, tokenizer, fitness, n, hf=mode == "pure_hf")
            if i:
                seconds.append(s)
    else:
        in_generate = [0.0]
        timed = fitness_module.generate

        def generate(*args, **kwargs):  # time inplace's generate calls; other modes never call it
            start = time.perf_counter()
            try:
                return timed(*args, **kwargs)
            finally:
                in_generate[0] += time.perf_counter() - start

        fitness_module.generate = generate
        _untie_shaping(trainer_module)
        cfg = ESConfig(population=n, sigma=0.0015, alpha=0.00075, iterations=iterations + 1, seed=0, mode=mode,
                       rank=rank, members_per_pass=args.members_per_pass)
        trainer = ESTrainer(model, fitness, len(fitness.rows), cfg)
        for i in range(iterations + 1):
            if i:
                paired.append(_pure(model, tokenizer, fitness, n, hf=False)[0])
            in_generate[0] = 0.0
            _sync(device)
            start = time.perf_counter()
            record = trainer.step(i)
            _sync(device)
            if i:
                seconds.append(time.perf_counter() - start)
                outside.append(1 - in_generate[0] / seconds[-1])
            else:
                peak = _peak_rss_mb()
            tokens = record["tokens"]
    sec = statistics.median(seconds)
    result = {
        "setting": name, **setting, "mode": mode, "device": _device_name(device), "dtype": args.dtype,
        "parameters": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads(),
        "warmstart_steps": args.warmstart_steps, "generation_batch_size": fitness.generation_batch_size,
        "seconds": round(sec, 4), "tokens": tokens,
        "tokens_per_s": round(tokens / sec, 1), "peak_rss_mb": round(peak or _peak_rss_mb(), 1),
        "runs": [round(s, 4) for s in seconds],
    }
    if device.type == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 1e6, 1)
    if not mode.startswith("pure"):
        result["pure_runs"] = [round(s, 4) for s in paired]
        result["ratio_to_pure"] = round(statistics.median(s / p for s, p in zip(seconds, paired)), 3)
    if mode == "lowrank":
        result["rank"] = rank
    if mode == "batched":
        # the least any implementation can add to pure: drawing N full-rank noise tensors, and reading
        # each member's own matrices once per new token at the device's (or this thread's) stream bandwidth
        nbytes = n * sum(p.numel() * p.element_size() for p in model.parameters() if p.dim() == 2)
        bandwidth = _stream_gb_per_s(nbytes, device)
        noise = _randn_seconds(n * sum(p.numel() for p in model.parameters()), device)
        floor = noise + setting["max_new_tokens"] * nbytes / (bandwidth * 1e9)
        result.update(member_weights_mb=round(nbytes / 1e6, 2), stream_gb_per_s=round(bandwidth, 2),
                      noise_seconds=round(noise, 4), floor_ratio=round(1 + floor / statistics.median(paired), 3))
    if mode == "inplace":
        result["fraction_outside_generate"] = round(statistics.median(outside), 4)
    return result


def main() -> None:
    from esft.models import TinyModelConfig

    shape = TinyModelConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=sorted(SETTINGS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rank", type=int, default=1, help="lowrank rank r")
    parser.add_argument("--members-per-pass", type=int, default=None, help="batched/lowrank: bounds memory")
    parser.add_argument("--generation-batch-size", type=int, default=None,
                        help="rows per pass (inplace: prompts per generate call); default: all N×B rows at once")
    parser.add_argument("--warmstart-steps", type=int, default=0,
                        help="0: random init (every row runs to max_new_tokens)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:k]")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    model = parser.add_argument_group("model shape (Qwen3 architecture; defaults: the embedded tiny model)")
    model.add_argument("--hidden", type=int, default=shape.hidden_size)
    model.add_argument("--intermediate", type=int, default=shape.intermediate_size)
    model.add_argument("--layers", type=int, default=shape.num_hidden_layers)
    model.add_argument("--heads", type=int, default=shape.num_attention_heads)
    model.add_argument("--kv-heads", type=int, default=shape.num_key_value_heads)
    model.add_argument("--head-dim", type=int, default=shape.head_dim)
    parser.add_argument("--child", nargs=2, metavar=("SETTING", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(*args.child, args)), flush=True)
        return
    for name in args.settings:
        pure = None
        for mode in ["pure"] + [m for m in args.modes if m != "pure"]:
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", name, mode],
                                 check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            pure = pure or result["seconds"]
            result.setdefault("ratio_to_pure", round(result["seconds"] / pure, 3))
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
