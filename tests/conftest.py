"""Shared fixtures: a tiny untrained model and its tokenizer, built in memory (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer():
    from esft.models import build_tokenizer

    return build_tokenizer()


@pytest.fixture()
def tiny_model(tokenizer):
    """A freshly initialised (not warm-started) micro model, deterministic from its seed."""
    from esft.models import TinyModelConfig, build_tiny_model

    cfg = TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=1, head_dim=16, warmstart_steps=0)
    return build_tiny_model(cfg, tokenizer).eval()
