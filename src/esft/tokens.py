"""Token-id rows as model inputs, padded to one width with their attention mask: the tiny model's
warm-start (`esft.models`), generation and scoring (`esft.rollout`) and KL (`esft.evaluate.kl`) pad alike."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, left: bool = False,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of token rows padded to one width: left for generation, right for scoring."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = 1
    return ids.to(device), mask.to(device)
