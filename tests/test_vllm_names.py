"""HF names of Qwen3, Qwen2 and Llama onto vLLM's fused tensors and back (no vLLM needed)."""

from __future__ import annotations

import pytest
import torch

from esft.errors import EsftError
from esft.rollout.vllm_names import check_engine, engine_shapes, fuse, fused_layout, unfuse

SHAPE = dict(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)


def _config(kind: str, tied: bool):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    if kind == "qwen3":  # head_dim apart from hidden/heads, as in Qwen3-4B (2560 hidden, 32 heads of 128)
        return Qwen3Config(**SHAPE, head_dim=24, tie_word_embeddings=tied)
    if kind == "qwen2":
        return Qwen2Config(**SHAPE, tie_word_embeddings=tied)
    return LlamaConfig(**SHAPE, attention_bias=True, tie_word_embeddings=tied)


def _meta_model(config):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _engine_names(kind: str, tied: bool, layers: int = 2) -> set[str]:
    """The parameter names a vLLM engine of this architecture holds (qwen2.py/qwen3.py/llama.py)."""
    names = {"model.embed_tokens.weight", "model.norm.weight"} | (set() if tied else {"lm_head.weight"})
    for i in range(layers):
        p = f"model.layers.{i}."
        names |= {p + n for n in ("self_attn.qkv_proj.weight", "self_attn.o_proj.weight", "mlp.gate_up_proj.weight",
                                  "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight")}
        if kind == "qwen3":
            names |= {p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"}
        else:  # qwen2 always has q/k/v biases; llama with attention_bias has o_proj's too
            names.add(p + "self_attn.qkv_proj.bias")
        if kind == "llama":
            names.add(p + "self_attn.o_proj.bias")
    return names


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("kind", ["qwen3", "qwen2", "llama"])
def test_layout_maps_every_hf_tensor_onto_the_engine_and_back(kind, tied):
    config = _config(kind, tied)
    model = _meta_model(config)
    hf_shapes = {n: p.shape for n, p in model.named_parameters()}
    layout = fused_layout(config, hf_shapes)
    assert [s.hf_name for s in layout] == list(hf_shapes)  # HF order, tied weights once
    shapes = engine_shapes(layout)
    assert set(shapes) == _engine_names(kind, tied)
    head_dim = 24 if kind == "qwen3" else 8
    assert shapes["model.layers.1.self_attn.qkv_proj.weight"] == ((4 + 2 * 2) * head_dim, 32)
    assert shapes["model.layers.0.mlp.gate_up_proj.weight"] == (2 * 48, 32)
    assert shapes["model.embed_tokens.weight"] == (128, 32)  # 100 rows padded to a multiple of 64
    by_name = {s.hf_name: s for s in layout}
    q, k, v = (by_name[f"model.layers.0.self_attn.{x}_proj.weight"] for x in "qkv")
    assert (q.start, q.stop, k.start, k.stop, v.start, v.stop) == (0, 4 * head_dim, 4 * head_dim, 6 * head_dim,
                                                                  6 * head_dim, 8 * head_dim)
    up = by_name["model.layers.0.mlp.up_proj.weight"]
    assert (up.engine_name, up.start, up.stop) == ("model.layers.0.mlp.gate_up_proj.weight", 48, 96)

    # real tensors: fuse as vLLM's loader does, then the views give every HF tensor back
    gen = torch.Generator().manual_seed(0)
    hf = {n: torch.randn(tuple(s), generator=gen) for n, s in hf_shapes.items()}
    engine = fuse(hf, layout)
    assert torch.equal(engine["model.embed_tokens.weight"][100:], torch.zeros(28, 32))
    back = unfuse(engine, layout)
    assert list(back) == list(hf) and all(torch.equal(back[n], hf[n]) for n in hf)
    back["model.layers.0.self_attn.k_proj.weight"].add_(1.0)  # a view: writes land in the fused tensor
    assert torch.equal(engine["model.layers.0.self_attn.qkv_proj.weight"][4 * head_dim:6 * head_dim],
                       hf["model.layers.0.self_attn.k_proj.weight"] + 1.0)


def test_a_tied_lm_head_listed_by_name_is_an_alias_of_the_embedding():
    config = _config("qwen3", tied=True)
    state = {n: tuple(t.shape) for n, t in _meta_model(config).state_dict().items()}
    assert "lm_head.weight" in state
    layout = fused_layout(config, state)
    head = next(s for s in layout if s.hf_name == "lm_head.weight")
    assert head.alias and head.engine_name == "model.embed_tokens.weight"
    assert "lm_head.weight" not in engine_shapes(layout)
    engine = {n: torch.zeros(s) for n, s in engine_shapes(layout).items()}
    assert "lm_head.weight" not in unfuse(engine, layout)  # evolved and exported once, as the embedding


def test_layout_refuses_what_it_cannot_map():
    config = _config("qwen2", tied=True)
    shapes = {n: p.shape for n, p in _meta_model(config).named_parameters()}
    with pytest.raises(EsftError, match="tensor_parallel_size 1 only"):
        fused_layout(config, shapes, tensor_parallel_size=2)
    config.num_key_value_heads = 4  # the config no longer describes these tensors
    with pytest.raises(EsftError, match="k_proj.weight: the config gives 32 rows, the model has 16"):
        fused_layout(config, shapes)
    config.model_type = "gemma"
    with pytest.raises(EsftError, match="not 'gemma'"):
        fused_layout(config, shapes)


def test_check_engine_names_every_mismatch():
    config = _config("llama", tied=False)
    layout = fused_layout(config, {n: p.shape for n, p in _meta_model(config).named_parameters()})
    engine = {n: torch.zeros(s) for n, s in engine_shapes(layout).items()}
    check_engine(layout, engine)
    sharded = dict(engine, **{"model.layers.0.mlp.gate_up_proj.weight": torch.zeros(48, 32)})  # TP 2's half
    with pytest.raises(EsftError, match=r"gate_up_proj.weight: engine \(48, 32\), expected \(96, 32\)"):
        check_engine(layout, sharded)
    with pytest.raises(EsftError, match="missing.*unexpected.*q_proj"):
        check_engine(layout, {**{n: t for n, t in engine.items() if "qkv" not in n},
                              "model.layers.0.self_attn.q_proj.weight": torch.zeros(32, 32)})
