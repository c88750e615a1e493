"""Test helper: a few ES iterations per mode with members sharded over torchrun ranks.

Run as `torchrun --standalone --nproc-per-node 2 es_distributed_worker.py OUT`: rank 0 writes every
mode's final θ to OUT, and each rank writes the members it evaluated itself to OUT.rank<r>.json.
"""

from __future__ import annotations

import json
import sys

import torch

from esft.methods.es import ESConfig
from esft.methods.es.distributed import ShardedEvaluator, init_distributed, is_main_process
from esft.methods.es.fitness import TaskFitness
from esft.methods.es.modes import MODES
from esft.methods.es.trainer import ESTrainer
from esft.models import TinyModelConfig, build_tiny_model, build_tokenizer
from esft.tasks import get_task

ROWS = [{"prompt": "Solve: 3 + 5 =", "target": "8"}, {"prompt": "Can penguins fly?", "target": "No"},
        {"prompt": "Name a colour.", "target": "red"}]


def train(mode: str, seen: list[int] | None = None) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Final θ and the run records of 2 iterations of 5 members (an uneven split over 2 ranks)."""
    tokenizer = build_tokenizer()
    model = build_tiny_model(TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                             warmstart_steps=0), tokenizer).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # larger weights so that members' completions differ
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3, generator=gen)
    fitness = TaskFitness(get_task("conciseness"), ROWS, tokenizer, 12, generation_batch_size=8)
    cfg = ESConfig(population=5, sigma=0.5, alpha=0.05, iterations=2, seed=5, mode=mode, rank=2)
    trainer = ESTrainer(model, fitness, len(ROWS), cfg)
    local = trainer.evaluator.local

    def recording(iteration, members, sigma, indices):
        members = list(members)
        if seen is not None:
            seen.extend(members)
        return local(iteration, members, sigma, indices)

    trainer.evaluator = ShardedEvaluator(recording)
    records = trainer.train()
    return trainer.population.master, records


if __name__ == "__main__":
    torch.set_num_threads(1)
    init_distributed("cpu")
    out, seen = {}, []
    for mode in MODES:
        master, _ = train(mode, seen)
        out.update({f"{mode}/{name}": t for name, t in master.items()})
    rank = torch.distributed.get_rank()
    with open(f"{sys.argv[1]}.rank{rank}.json", "w") as fh:
        json.dump(seen, fh)
    if is_main_process():
        from safetensors.torch import save_file

        save_file(out, sys.argv[1])
    torch.distributed.destroy_process_group()
