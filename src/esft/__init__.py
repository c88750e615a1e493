"""esft: Evolution Strategies fine-tuning of LLMs, side by side with GRPO and LBES."""

__version__ = "0.1.0"
