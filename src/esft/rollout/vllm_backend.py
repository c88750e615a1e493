"""Generation with vLLM (extra `gpu`): the engine behind `es.backend: vllm` and `evaluate.backend: vllm`.

vLLM is imported only when an engine is opened, so configs validate and the HF path runs without it. The
engine's worker takes `esft.rollout.vllm_worker.WeightsExtension` (ES's engines: its subclass
`esft.methods.es.vllm_worker.ESWorkerExtension`), so its weights can be replaced (a checkpoint) or perturbed
(ES members) in place through `LLM.collective_rpc`; after every such write the prefix cache
is reset, since its cached KV was computed with the previous weights. Completions are greedy (or seeded
per row at temperature > 0), stop on `esft.rollout.stop_ids` of the model, and are cut and counted by the
same `decode_completions` as the Hugging Face path.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from esft.errors import EsftError
from esft.io import open_weights
from esft.rollout.hf import Generations, decode_completions, stop_ids
from esft.rollout.vllm_names import Shard, fused_layout

WORKER_EXTENSION = "esft.rollout.vllm_worker.WeightsExtension"
CPU_WORKER = "esft.rollout.vllm_cpu.KeptWeightsCPUWorker"
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
    enforce_eager: bool = False
    """Run the model eagerly: no torch.compile, no CUDA graphs (slower decoding, faster start)."""
    kv_cache_memory_bytes: int | None = None
    """KV cache size in bytes; None sizes it from gpu_memory_utilization (on vLLM's CPU backend a share of
    the NUMA node's memory, where a small share is refused as unavailable: set bytes there)."""

    def __post_init__(self) -> None:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise EsftError(f"vllm.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise EsftError(f"vllm.max_model_len must be >= 1 or null, got {self.max_model_len}")
        if self.kv_cache_memory_bytes is not None and self.kv_cache_memory_bytes < 1:
            raise EsftError(f"vllm.kv_cache_memory_bytes must be >= 1 or null, got {self.kv_cache_memory_bytes}")

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
    """A vLLM engine on one device whose weights esft writes in place (HF names, `layout`).

    llm: a `vllm.LLM` built with `WORKER_EXTENSION` or a subclass; sampling_params: `vllm.SamplingParams` (passed in, so
    that the backend's own logic is tested without vLLM).
    """

    def __init__(self, llm, sampling_params: Callable[..., Any], tokenizer, stops: Sequence[int],
                 layout: Sequence[Shard]) -> None:
        self.llm = llm
        self.sampling_params = sampling_params
        self.tokenizer = tokenizer
        self.stops = list(stops)
        self.layout = list(layout)

    def call(self, method: str, *args: Any) -> Any:
        """Run the worker extension's `<method>(*args)` on the engine's (single) worker."""
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


LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                      "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""What torchrun sets for a rank; an engine is a world of its own, so its processes never see them."""


@contextmanager
def engine_environment() -> Iterator[None]:
    """The environment vLLM's engine processes inherit while one is built: under torchrun (WORLD_SIZE > 1)
    without the launcher's variables and, on CUDA, with only this rank's GPU (LOCAL_RANK of the visible
    devices) visible, so that each rank's engine runs on its own device; unchanged otherwise."""
    saved = dict(os.environ)
    if int(saved.get("WORLD_SIZE", "1")) > 1:
        if saved.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0":
            raise EsftError("VLLM_ENABLE_V1_MULTIPROCESSING=0 builds the engine inside this rank's process, where "
                            "it would join torchrun's process group: unset it to run one engine per rank")
        for key in LAUNCHER_VARIABLES:
            os.environ.pop(key, None)
        if torch.cuda.is_available():
            visible = saved.get("CUDA_VISIBLE_DEVICES")
            devices = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
            os.environ["CUDA_VISIBLE_DEVICES"] = devices[int(saved.get("LOCAL_RANK", "0"))]
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def open_engine(base: str | Path, dtype: str, options: VllmOptions,
                requests: Sequence[tuple[Sequence[list[dict[str, str]]], int]], seed: int = 0,
                worker_extension: str = WORKER_EXTENSION) -> VllmEngine:
    """A vLLM engine on a base-model directory (hub snapshot, local path or the tiny model's files).

    requests: (conversations, max_new_tokens) of each task the engine will serve; their longest prompt
    plus its task's max_new_tokens is the engine's max_model_len unless options set one. worker_extension: the
    dotted name of the worker's extension (`WORKER_EXTENSION` or a subclass, as ES's). On vLLM's CPU
    platform the engine's worker is `CPU_WORKER` (linear layers compute from the weights esft writes).
    """
    vllm = import_vllm()
    from vllm.platforms import current_platform

    from esft.models import load_tokenizer, resolve_source
    from esft.rollout.hf import encode_prompts

    source = resolve_source(base)
    tokenizer = load_tokenizer(base)
    needed = max(max(map(len, encode_prompts(tokenizer, conversations)), default=0) + new
                 for conversations, new in requests)
    model = shape_model(source)
    layout = fused_layout(model.config, {n: p.shape for n, p in model.named_parameters()})
    platform = {"worker_cls": CPU_WORKER} if current_platform.is_cpu() else {}
    with engine_environment():
        llm = vllm.LLM(model=source, dtype=dtype, seed=seed, tensor_parallel_size=1,
                       worker_extension_cls=worker_extension, **platform, **options.engine_args(needed))
    return VllmEngine(llm, vllm.SamplingParams, tokenizer, stop_ids(model, tokenizer), layout)
