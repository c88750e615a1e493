"""Parameter groups (emb / attn / mlp / norm / head) from Qwen2, Qwen3 and Llama parameter names."""

from __future__ import annotations

GROUPS = ("emb", "attn", "mlp", "norm", "head")


def param_group(name: str) -> str:
    """The group of a parameter name; unknown names raise so that a new architecture is noticed."""
    if "embed_tokens" in name:
        return "emb"
    if name.startswith("lm_head"):
        return "head"
    if "norm" in name:
        return "norm"
    if ".self_attn." in name:
        return "attn"
    if ".mlp." in name:
        return "mlp"
    raise ValueError(f"cannot tell the group of parameter {name!r}; known groups: {', '.join(GROUPS)}")
