"""Generation and log-likelihood backends (Hugging Face here; vLLM on GPU)."""

from esft.rollout.hf import Generations, decode_completions, encode_prompts, generate, stop_ids
from esft.rollout.scoring import score_sequences

__all__ = ["Generations", "decode_completions", "encode_prompts", "generate", "score_sequences", "stop_ids"]
