"""ES over LoRA adapters (peft): wrap a model, alternate the A and B phases, export merged weights.

Only the adapter tensors evolve. A and B are never perturbed together: B starts at zero, so with both
moving the A perturbation enters the model only through the product σ²·ε_B·ε_A, at second order.
The exported checkpoint is the base model with every adapter merged (W + (alpha/r)·B·A, in fp32)
under the standard Hugging Face parameter names, so evaluation loads it like any full fine-tune.
"""

from __future__ import annotations

import math

import torch

from esft.errors import EsftError
from esft.methods.es.config import LoRAConfig
from esft.noise import noise_key

ADAPTER = "default"


def wrap_lora(model: torch.nn.Module, cfg: LoRAConfig, seed: int) -> torch.nn.Module:
    """The peft model with adapters on `cfg.target_modules`; A is drawn from a key of (seed, name).

    peft's own A initialisation draws from the global RNG; drawing A from keyed generators instead makes
    θ_0 a function of the seed alone, so a resumed or replayed run starts from the same adapters.
    """
    from peft import LoraConfig, get_peft_model

    peft_cfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, target_modules=list(cfg.target_modules),
                          lora_dropout=0.0, bias="none")
    wrapped = get_peft_model(model, peft_cfg)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if ".lora_A." in name:  # kaiming-uniform(a=√5) bound, as peft and nn.Linear use
                bound = 1.0 / math.sqrt(param.shape[1])
                gen = torch.Generator(device=param.device).manual_seed(noise_key(seed, -1, -1, name))
                draw = torch.rand(param.shape, generator=gen, dtype=torch.float32, device=param.device)
                param.copy_(draw.mul_(2 * bound).sub_(bound))
    return wrapped


def lora_phases(names: list[str], order: str) -> list[frozenset[str]]:
    """Tensor-name sets per phase of `order` ('A' → lora_A tensors, 'B' → lora_B tensors)."""
    by_letter = {letter: frozenset(n for n in names if f".lora_{letter}." in n) for letter in "AB"}
    for letter, group in by_letter.items():
        if not group:
            raise EsftError(f"es.lora: no lora_{letter} tensors among the evolved parameters")
    other = sorted(set(names) - by_letter["A"] - by_letter["B"])
    if other:  # e.g. embedding adapters (lora_embedding_A): neither phased nor merged here
        raise EsftError(f"es.lora: only linear target modules are supported, got {other[:3]}")
    return [by_letter[letter] for letter in order]


def merged_weights(wrapped: torch.nn.Module, master: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Base weights with each adapter merged in fp32, under the unwrapped model's parameter names."""
    from peft.tuners.lora import LoraLayer

    state = {}
    for name, param in wrapped.named_parameters():
        if ".lora_" not in name:
            state[name] = param.detach().to(torch.float32).clone()
    for mod_name, module in wrapped.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
            a = master[f"{mod_name}.lora_A.{ADAPTER}.weight"]
            b = master[f"{mod_name}.lora_B.{ADAPTER}.weight"]
            state[f"{mod_name}.base_layer.weight"] += module.scaling[ADAPTER] * (b @ a)
    prefix = "base_model.model."
    return {n.removeprefix(prefix).replace(".base_layer.", "."): t for n, t in state.items()}
