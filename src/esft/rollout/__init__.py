"""Generation and log-likelihood backends (Hugging Face here; vLLM on GPU)."""

from esft.rollout.hf import Generations, decode_completions, encode_prompts, generate

__all__ = ["Generations", "decode_completions", "encode_prompts", "generate"]
