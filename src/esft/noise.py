"""Counter-based Gaussian noise keyed per tensor.

Each (run seed, iteration, member, parameter name) gets its own generator seeded from a hash of that
tuple, so two tensors never share a stream, any rank can regenerate any member's noise, and the
noise does not depend on the order in which tensors are visited or on any global RNG.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def noise_key(seed: int, iteration: int, member: int, name: str) -> int:
    """A 63-bit generator seed for one tensor of one member in one iteration."""
    digest = hashlib.blake2b(f"{seed}|{iteration}|{member}|{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def tensor_noise(like: torch.Tensor, seed: int, iteration: int, member: int, name: str) -> torch.Tensor:
    """Standard-normal fp32 noise shaped like `like`, on its device, keyed as `noise_key`."""
    gen = torch.Generator(device=like.device)
    gen.manual_seed(noise_key(seed, iteration, member, name))
    return torch.randn(like.shape, generator=gen, dtype=torch.float32, device=like.device)


@contextmanager
def sampling_rng(seed: int, iteration: int) -> Iterator[None]:
    """Seed torch's global RNG with the iteration's sampling key, and restore it afterwards.

    Every member of an iteration evaluates inside this context, so sampled completions use common
    random numbers: members differ only by their weights. The caller's RNG state is left untouched.
    """
    with torch.random.fork_rng():
        torch.manual_seed(noise_key(seed, iteration, -1, "sampling"))
        yield
