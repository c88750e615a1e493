"""Generation with vLLM (extra `gpu`): the engine behind `es.backend: vllm` and `evaluate.backend: vllm`.

vLLM is imported only when an engine is opened, so configs validate and the HF path runs without it. The
engine is built with `esft.es.vllm_worker.ESWorkerExtension`, so its weights can be replaced (a checkpoint)
or perturbed (ES members) in place through `LLM.collective_rpc`; after every such write the prefix cache
is reset, since its cached KV was computed with the previous weights. Completions are greedy (or seeded
per row at temperature > 0), stop on `esft.rollout.stop_ids` of the model, and are cut and counted by the
same `decode_completions` as the Hugging Face path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from esft.errors import EsftError
from esft.io import open_weights
from esft.rollout.hf import Generations, decode_completions, stop_ids
from esft.rollout.vllm_names import Shard, fused_layout

WORKER_EXTENSION = "esft.es.vllm_worker.ESWorkerExtension"
INSTALL = "pip install 'esft[gpu]'"


@dataclass(frozen=True)
class VllmOptions:
    """Engine options (`es.vllm`, `evaluate.vllm`)."""

    gpu_memory_utilization: float = 0.5
    """Fraction of the GPU vLLM takes for weights, activations and KV cache. ES keeps its fp32 master, θ_0
    and a workspace on the GPU beside it (unless es.master_device / theta0_device are cpu): leave room."""
    max_model_len: int | None = None
    """Longest prompt + completion; None derives it from the requests the engine is opened for (the
    model's own maximum, 262,144 tokens for Qwen3-4B, needs a KV cache that does not fit beside ES)."""
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise EsftError(f"vllm.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise EsftError(f"vllm.max_model_len must be >= 1 or null, got {self.max_model_len}")

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> VllmOptions:
        unknown = sorted(set(cfg) - {f.name for f in fields(cls)})
        if unknown:
            raise EsftError(f"unknown vllm option(s) {unknown}; allowed: {sorted(f.name for f in fields(cls))}")
        return cls(**cfg)

    def engine_args(self, needed: int) -> dict[str, Any]:
        """Keyword arguments of `vllm.LLM`: `needed` (longest prompt + max new tokens) when max_model_len is
        None; a set max_model_len shorter than `needed` would truncate requests, so it is refused."""
        if self.max_model_len is not None and self.max_model_len < needed:
            raise EsftError(f"vllm.max_model_len {self.max_model_len} is shorter than the longest prompt plus "
                            f"max_new_tokens ({needed}): raise it or set null to derive it")
        return {**asdict(self), "max_model_len": self.max_model_len or needed}


def import_vllm():
    """The vllm module, or a one-line error saying how to install it."""
    try:
        import vllm
    except ImportError:
        raise EsftError(f"backend vllm needs the vllm package, which is not installed: {INSTALL}") from None
    return vllm


def row_seed(seed: int, row: int) -> int:
    """The 63-bit sampling seed of row `row` of a generate call: rows sample independently of batching."""
    digest = hashlib.blake2b(f"{seed}|vllm-row|{row}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def shape_model(source: str) -> torch.nn.Module:
    """The HF model of `source` on the meta device (no memory): its parameter names and shapes, its config
    and its generation config (the stop ids)."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.from_pretrained(source)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    try:
        model.generation_config = GenerationConfig.from_pretrained(source)
    except OSError:  # no generation_config.json: the one from_config derived from the config
        pass
    return model


class VllmEngine:
    """A vLLM engine on one GPU whose weights esft writes in place (HF names, `layout`).

    llm: a `vllm.LLM` built with `WORKER_EXTENSION`; sampling_params: `vllm.SamplingParams` (passed in, so
    that a stand-in engine serves the CPU tests).
    """

    def __init__(self, llm, sampling_params: Callable[..., Any], tokenizer, stops: Sequence[int],
                 layout: Sequence[Shard]) -> None:
        self.llm = llm
        self.sampling_params = sampling_params
        self.tokenizer = tokenizer
        self.stops = list(stops)
        self.layout = list(layout)

    def call(self, method: str, *args: Any) -> Any:
        """Run `ESWorkerExtension.<method>(*args)` on the engine's (single) worker."""
        return self.llm.collective_rpc(method, args=args)[0]

    def write(self, method: str, *args: Any) -> Any:
        """`call` a method that changes the weights, then drop the KV the old weights computed. vLLM's
        reset_prefix_cache returns False (and only logs a warning) while blocks are still held: the next
        generation would reuse KV of the old weights, so that stops the run."""
        result = self.call(method, *args)
        if self.llm.reset_prefix_cache() is False:
            raise EsftError(f"vLLM could not reset its prefix cache after {method} (blocks still in use): its "
                            f"cached KV would be that of the previous weights")
        return result

    def shards(self) -> list[dict[str, Any]]:
        """The layout in its RPC form."""
        return [asdict(s) for s in self.layout]

    def load_weights(self, path: str | Path) -> None:
        """Write an HF-named checkpoint (weights.safetensors) into the engine."""
        with open_weights(path):  # its header checked here: a bad file is one line, not an error in the worker
            pass
        self.write("esft_load_weights", str(path), self.shards())

    def generate(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, temperature: float = 0.0,
                 seed: int | None = None, top_p: float = 1.0) -> Generations:
        """Completions of pre-tokenised prompts: greedy, or sampled at `temperature` within the nucleus of
        mass `top_p`, row i seeded by `row_seed(seed, i)`; the engine schedules its own batches."""
        if temperature > 0 and seed is None:
            raise EsftError("sampled generation (temperature > 0) needs a seed")
        params = [self.sampling_params(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                       stop_token_ids=self.stops, detokenize=False,
                                       seed=row_seed(seed, i) if temperature > 0 else None)
                  for i in range(len(prompt_ids))]
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompt_ids], params, use_tqdm=False)
        return decode_completions(self.tokenizer, [list(o.outputs[0].token_ids) for o in outputs], self.stops)


def open_engine(base: str | Path, dtype: str, options: VllmOptions,
                requests: Sequence[tuple[Sequence[list[dict[str, str]]], int]], seed: int = 0) -> VllmEngine:
    """A vLLM engine on a base-model directory (hub snapshot, local path or the tiny model's files).

    requests: (conversations, max_new_tokens) of each task the engine will serve; their longest prompt
    plus its task's max_new_tokens is the engine's max_model_len unless options set one.
    """
    vllm = import_vllm()
    from esft.models import load_tokenizer, resolve_source
    from esft.rollout.hf import encode_prompts

    source = resolve_source(base)
    tokenizer = load_tokenizer(base)
    needed = max(max(map(len, encode_prompts(tokenizer, conversations)), default=0) + new
                 for conversations, new in requests)
    model = shape_model(source)
    layout = fused_layout(model.config, {n: p.shape for n, p in model.named_parameters()})
    llm = vllm.LLM(model=source, dtype=dtype, seed=seed, tensor_parallel_size=1,
                   worker_extension_cls=WORKER_EXTENSION, **options.engine_args(needed))
    return VllmEngine(llm, vllm.SamplingParams, tokenizer, stop_ids(model, tokenizer), layout)
