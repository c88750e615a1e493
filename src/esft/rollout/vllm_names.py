"""Hugging Face parameter names of Qwen3, Qwen2 and Llama onto vLLM's fused tensors, and back.

vLLM (tensor-parallel size 1) keeps a layer's q_proj, k_proj and v_proj as one `qkv_proj` tensor and its
gate_proj and up_proj as one `gate_up_proj`, stacked along dim 0 (output features) in that order
(`stacked_params_mapping` in vLLM's qwen2.py/llama.py); it pads the embedding and an untied LM head to a
multiple of 64 rows (zeros), and a tied LM head is the embedding module itself. Every other tensor keeps its
HF name and shape. A `Shard` says where one HF tensor lives in the engine, so the ES engine
(`esft.methods.es.vllm_worker`) perturbs, restores and exports the engine's tensors under HF names and noise keys.

Pure (no vLLM import): tested on CPU against configs built with transformers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from esft.errors import EsftError

MODEL_TYPES = ("qwen3", "qwen2", "llama")
VOCAB_PADDING = 64
"""vLLM's DEFAULT_VOCAB_PADDING_SIZE: embedding and LM-head rows are padded to a multiple of this."""

FUSED = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
         "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}
"""HF module -> (vLLM module, position in the stack)."""
VOCAB = ("model.embed_tokens.weight", "lm_head.weight")


@dataclass(frozen=True)
class Shard:
    """HF tensor `hf_name` (shape `shape`) is rows [start, stop) of engine tensor `engine_name`."""

    hf_name: str
    engine_name: str
    start: int
    stop: int
    shape: tuple[int, ...]
    alias: bool = False
    """A tied LM head: the embedding's rows under a second HF name (never evolved or exported twice)."""


def padded(rows: int) -> int:
    return -(-rows // VOCAB_PADDING) * VOCAB_PADDING


def _stack_sizes(config) -> dict[str, list[int]]:
    """Rows of each member of a fused stack, from the config: q, k, v and gate, up."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    inter = config.intermediate_size
    return {"qkv_proj": [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim],
            "gate_up_proj": [inter, inter]}


def fused_layout(config, hf_shapes: Mapping[str, Sequence[int]], tensor_parallel_size: int = 1) -> list[Shard]:
    """One Shard per HF tensor of `hf_shapes` (an HF model's named parameters, in its order).

    Offsets come from the config (num_heads·head_dim, num_kv_heads·head_dim, intermediate_size) and are
    checked against the HF shapes; a tied `lm_head.weight`, if listed, is an alias of the embedding.
    """
    if tensor_parallel_size != 1:
        raise EsftError(f"the vLLM ES engine maps weights for tensor_parallel_size 1 only, got "
                        f"{tensor_parallel_size}: run one engine per GPU")
    if config.model_type not in MODEL_TYPES:
        raise EsftError(f"the vLLM backend maps {', '.join(MODEL_TYPES)} weights, not {config.model_type!r}")
    sizes = _stack_sizes(config)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    layout = []
    for name, shape in hf_shapes.items():
        shape = tuple(int(s) for s in shape)
        module, _, leaf = name.rpartition(".")
        parent, _, kind = module.rpartition(".")
        if kind in FUSED:
            fused, position = FUSED[kind]
            rows = sizes[fused]
            if rows[position] != shape[0]:
                raise EsftError(f"{name}: the config gives {rows[position]} rows, the model has {shape[0]}")
            start = sum(rows[:position])
            layout.append(Shard(name, f"{parent}.{fused}.{leaf}", start, start + shape[0], shape))
        elif name == "lm_head.weight" and tied:
            layout.append(Shard(name, VOCAB[0], 0, shape[0], shape, alias=True))
        else:
            layout.append(Shard(name, name, 0, shape[0], shape))
    return layout


def engine_shapes(layout: Iterable[Shard]) -> dict[str, tuple[int, ...]]:
    """The shape of every engine tensor the layout expects (vocab tensors padded as vLLM pads them)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for s in layout:
        rows = max(s.stop, shapes.get(s.engine_name, (0,))[0])
        shapes[s.engine_name] = (rows, *s.shape[1:])
    return {n: (padded(shape[0]), *shape[1:]) if n in VOCAB else shape for n, shape in shapes.items()}


def check_engine(layout: Sequence[Shard], engine: Mapping[str, torch.Tensor]) -> None:
    """Raise unless the engine holds exactly the tensors and shapes the layout expects."""
    expected = engine_shapes(layout)
    actual = {n: tuple(t.shape) for n, t in engine.items()}
    wrong = sorted(n for n in set(expected) & set(actual) if expected[n] != actual[n])
    missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
    if wrong or missing or extra:
        detail = "; ".join(
            [f"{n}: engine {actual[n]}, expected {expected[n]}" for n in wrong[:3]]
            + ([f"missing {missing[:3]}"] if missing else []) + ([f"unexpected {extra[:3]}"] if extra else []))
        raise EsftError(f"the vLLM engine's tensors do not match the HF model's fused layout: {detail}")


def unfuse(engine: Mapping[str, torch.Tensor], layout: Sequence[Shard]) -> dict[str, torch.Tensor]:
    """HF-named views into the engine's tensors (aliases left out): writing a view writes the engine."""
    check_engine(layout, engine)
    return {s.hf_name: engine[s.engine_name][s.start:s.stop] for s in layout if not s.alias}


def fuse(hf: Mapping[str, torch.Tensor], layout: Sequence[Shard]) -> dict[str, torch.Tensor]:
    """Engine-named tensors built from HF tensors as vLLM's loader builds them (padding rows zero)."""
    first = next(iter(hf.values()))
    engine = {n: torch.zeros(shape, dtype=first.dtype, device=first.device)
              for n, shape in engine_shapes(layout).items()}
    for s in layout:
        if not s.alias:
            engine[s.engine_name][s.start:s.stop] = hf[s.hf_name]
    return engine
