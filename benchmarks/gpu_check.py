"""GPU acceptance check: one JSON object about a Qwen3-4B-shaped model with random weights, offline.

The model is built from `resources/gpu_check/qwen3_4b_config.json` (Qwen3-4B-Instruct-2507's shape; nothing
is downloaded) and the prompts are the embedded conciseness prompts in numbered variants, tokenised by the
tiny character tokenizer, so only torch, transformers and esft are needed. It reports:

- `modes`: a whole ES iteration (`ESTrainer.step`) in each population mode against pure inference of the
  same members × prompts rows with the unperturbed model (median of the timed iterations, each paired
  with a pure run just before it), and each mode's peak device memory against its memory plan
  (`esft.methods.es.run.check_memory`, the plan a training job logs and checks);
- `perturb_restore`: a member written into the model and restored from the fp32 master gives back the
  original weights bit for bit;
- `bf16_rounding`: how much of a GRPO-sized update (1e-5 per weight) survives a bf16 round trip, on
  matrix-scale weights (std 0.02) and on norm gains (1.0): why ES keeps an fp32 master.

    python benchmarks/gpu_check.py                      # on one H100/H200: Qwen3-4B shape, a few minutes
    python benchmarks/gpu_check.py --shape small        # any machine, seconds (what the test runs)
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

import torch

from population_modes import _pure, _sync, _untie_shaping

CONFIG = Path(__file__).resolve().parent.parent / "resources" / "gpu_check" / "qwen3_4b_config.json"
SMALL = {"vocab_size": 512, "bos_token_id": None, "eos_token_id": None, "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}
"""The --shape small overrides: Qwen3-4B's layout (tied, grouped-query, head_dim) in a model a CPU runs in seconds."""
SHAPES = {
    # members, prompts, new tokens, batched members per pass, timed iterations
    "qwen3_4b": {"population": 8, "prompts": 16, "max_new_tokens": 64, "members_per_pass": 2, "iterations": 2},
    "small": {"population": 4, "prompts": 2, "max_new_tokens": 4, "members_per_pass": 2, "iterations": 1},
}


def build_model(shape: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The shipped Qwen3-4B config (or its small variant) with random weights on `device`."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    cfg = Qwen3Config(**{**json.loads(CONFIG.read_text()), **(SMALL if shape == "small" else {})})
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    for p in model.parameters():
        p.requires_grad_(True)
    return model.eval()


def fitness_of(tokenizer, shape: dict):
    """Conciseness rewards (length against target) of numbered variants of the embedded prompts."""
    from esft.methods.es.fitness import TaskFitness
    from esft.tasks import get_task
    from esft.tasks.conciseness import embedded_rows

    base = embedded_rows()["train"]
    rows = [{**base[i % len(base)], "prompt": f"{base[i % len(base)]['prompt']} ({i})"}
            for i in range(shape["prompts"])]
    return TaskFitness(get_task("conciseness"), rows, tokenizer, shape["max_new_tokens"],
                       generation_batch_size=shape["population"] * shape["prompts"])


def device_peak(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def mode_check(model, tokenizer, fitness, mode: str, shape: dict) -> dict:
    """One mode: seconds per ES iteration against pure inference, and peak memory against the plan."""
    from esft.methods.es import ESConfig
    from esft.methods.es.run import check_memory
    from esft.methods.es.trainer import ESTrainer

    device = next(model.parameters()).device
    release(device)
    n = shape["population"]
    cfg = ESConfig(population=n, sigma=0.0015, alpha=0.00075, iterations=shape["iterations"] + 1, seed=0, mode=mode,
                   generation_batch_size=n * shape["prompts"],
                   members_per_pass=shape["members_per_pass"] if mode == "batched" else None)
    plan = check_memory(model, cfg, fitness, len(fitness.rows), fitness.max_new_tokens, "es")
    trainer = ESTrainer(model, fitness, len(fitness.rows), cfg)
    seconds, pure, varied = [], [], 0
    for i in range(shape["iterations"] + 1):
        if i:
            pure.append(_pure(model, tokenizer, fitness, n, hf=False)[0])
        _sync(device)
        start = time.perf_counter()
        record = trainer.step(i)
        _sync(device)
        if i:
            seconds.append(time.perf_counter() - start)
        varied += len(set(record["fitness"])) > 1
    peak = device_peak(device)
    trainer.population.restore()
    del trainer
    sec = statistics.median(seconds)
    return {"mode": mode, "seconds": round(sec, 3), "pure_seconds": round(statistics.median(pure), 3),
            "ratio_to_pure": round(statistics.median(s / p for s, p in zip(seconds, pure)), 3),
            "iterations_with_varied_fitness": varied,
            "peak_bytes": peak, "plan_bytes": plan.device_bytes,
            "peak_over_plan": None if peak is None else round(peak / plan.device_bytes, 3)}


def perturb_restore(model) -> dict:
    """A member's weights differ from θ; restoring from the master gives θ back bit for bit."""
    from esft.methods.es.population import Population
    from esft.methods.es.trainer import trainable

    params = trainable(model)
    before = {n: p.detach().to("cpu", copy=True) for n, p in params.items()}
    population = Population(params, seed=3)
    population.perturb(0, 1, 0.0015)
    moved = sum(not torch.equal(p.detach().cpu(), before[n]) for n, p in params.items())
    population.restore()
    exact = all(torch.equal(p.detach().cpu(), before[n]) for n, p in params.items())
    return {"tensors": len(params), "tensors_moved_by_member": moved, "restored_bit_for_bit": exact}


def bf16_rounding(device: torch.device, numel: int) -> dict:
    """Share of a 1e-5-per-weight update that survives adding it to bf16 weights and rounding back."""
    gen = torch.Generator(device=device).manual_seed(0)
    update = 1e-5
    out = {}
    for scale, weights in (("matrix_std_0.02", torch.randn(numel, generator=gen, device=device) * 0.02),
                           ("norm_gain_1.0", torch.ones(numel, device=device))):
        w = weights.to(torch.bfloat16)
        moved = (w.float() + update).to(torch.bfloat16).float() - w.float()
        out[scale] = {"entries_changed": round((moved != 0).float().mean().item(), 4),
                      "update_kept": round((moved.double().sum() / (numel * update)).item(), 4)}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3_4b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--modes", nargs="+", default=["inplace", "batched", "lowrank"])
    args = parser.parse_args(argv)
    import esft.methods.es.trainer as trainer_module
    from esft.models import build_tokenizer

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = SHAPES[args.shape]
    _untie_shaping(trainer_module)  # random weights may tie every member: time a real update anyway
    start = time.perf_counter()
    tokenizer = build_tokenizer()
    model = build_model(args.shape, device, dtype)
    fitness = fitness_of(tokenizer, shape)
    result = {
        "shape": args.shape, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__,
        "parameters": sum(p.numel() for p in model.parameters()), **shape,
        "capacity_bytes": torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None,
        "modes": [mode_check(model, tokenizer, fitness, mode, shape) for mode in args.modes],
        "perturb_restore": perturb_restore(model),
        "bf16_rounding": bf16_rounding(device, 1 << 20),
    }
    result["seconds_total"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
