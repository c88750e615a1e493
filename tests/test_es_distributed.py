"""Members sharded over 2 gloo ranks under torchrun end bit-identical to a single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from esft.methods.es.distributed import shard
from esft.methods.es.modes import MODES

WORKER = Path(__file__).with_name("es_distributed_worker.py")


@pytest.mark.parametrize("n,world", [(5, 2), (30, 4), (3, 3), (2, 4)])
def test_shard_is_a_contiguous_balanced_partition(n, world):
    members = list(range(10, 10 + n))
    blocks = [shard(members, r, world) for r in range(world)]
    assert sum(blocks, []) == members
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_two_gloo_ranks_equal_one_process_bit_for_bit(tmp_path):
    from es_distributed_worker import train

    out = tmp_path / "theta.safetensors"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    str(WORKER), str(out)], check=True, env=env, timeout=240, cwd=tmp_path)
    two = load_file(str(out))
    seen = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(2)]
    # 2 iterations of 5 members per mode: rank 0 evaluates members 0-2, rank 1 members 3-4
    assert seen[0] == [0, 1, 2] * 2 * len(MODES) and seen[1] == [3, 4] * 2 * len(MODES)
    final = {}
    for mode in MODES:
        final[mode], records = train(mode)
        assert any(len(set(r["fitness"])) > 1 for r in records), f"{mode}: no signal, nothing was compared"
        for name, theta in final[mode].items():
            assert torch.equal(two[f"{mode}/{name}"], theta), (mode, name)
    # same fitness, same update: training in batched mode ends where inplace ends
    assert all(torch.equal(final["batched"][n], final["inplace"][n]) for n in final["inplace"])
