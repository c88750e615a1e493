"""Test helper: LBES iterations with members sharded over torchrun ranks, where rank 1's own sampling
would draw other completions (its `sample` is sabotaged); rank r writes its records to OUT.rank<r>.json.

Run as `torchrun --standalone --nproc-per-node 2 lbes_distributed_worker.py OUT`.
"""

from __future__ import annotations

import json
import sys

import torch

from esft.methods.es.distributed import init_distributed
from esft.methods.es.lbes import LBESConfig, LBESTrainer
from esft.models import TinyModelConfig, build_tiny_model, build_tokenizer
from esft.tasks.conciseness import Conciseness, embedded_rows


class Digits(Conciseness):
    """A reward that varies a lot between sampled completions of an untrained model."""

    def reward(self, completion, row):
        return float(sum(map(ord, completion)) % 5)


if __name__ == "__main__":
    torch.set_num_threads(1)
    init_distributed("cpu")
    rank = torch.distributed.get_rank()
    tokenizer = build_tokenizer()
    model = build_tiny_model(TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                             warmstart_steps=0), tokenizer).eval()
    cfg = LBESConfig.from_dict({"population": 4, "sigma": 0.1, "alpha": 0.05, "iterations": 2, "batch_size": None,
                                "n_samples": 6, "temperature": 1.0, "k_var": 2, "k": 2, "seed": 1})
    trainer = LBESTrainer(model, tokenizer, Digits(), embedded_rows()["train"], cfg, max_new_tokens=8,
                          run_id="lbes/single/1-conciseness")
    if rank == 1:
        own = trainer.sample
        trainer.sample = lambda iteration, indices: own(iteration + 100, indices)  # other completions
    records = trainer.train()
    with open(f"{sys.argv[1]}.rank{rank}.json", "w") as fh:
        json.dump([{k: v for k, v in r.items() if k not in ("seconds", "tokens_per_s")} for r in records], fh)
    torch.distributed.destroy_process_group()
