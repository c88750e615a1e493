"""Generation and log-likelihood backends (Hugging Face here; vLLM on GPU)."""

from esft.rollout.hf import Generations, encode_prompts, generate

__all__ = ["Generations", "encode_prompts", "generate"]
