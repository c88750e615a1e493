"""Generation and log-likelihood backends (Hugging Face here; vLLM on GPU)."""

from esft.rollout.hf import Generations, decode_completions, encode_prompts, generate, pad_batch, stop_ids

__all__ = ["Generations", "decode_completions", "encode_prompts", "generate", "pad_batch", "stop_ids"]
