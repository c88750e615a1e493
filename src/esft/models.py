"""Base models: the embedded tiny Qwen3 model built offline, and loading of any HF causal LM.

A base model directory holds `model.json`, a manifest naming where the weights live: for the tiny
model, HF files in the same directory; for a hub model, a snapshot downloaded once into `hf/` (so that
jobs on compute nodes without internet never touch the hub; the token, if the repo needs one, comes
from the HF_TOKEN environment variable and is never written); for a local path, that path. Fine-tuned
checkpoints are `weights.safetensors` files with standard parameter names, loaded on top of the base.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import re
import shutil
import string
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from esft.errors import EsftError
from esft.io import read_json, read_weights, write_json
from esft.tokens import pad_batch

log = logging.getLogger(__name__)

PAD, EOS, BOS_TURN, UNK = "<|endoftext|>", "<|im_end|>", "<|im_start|>", "<|unk|>"
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


@dataclass
class TinyModelConfig:
    """Shape and warm-start of the embedded default model (a Qwen3-architecture causal LM)."""

    hidden_size: int = 64
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    max_position_embeddings: int = 512
    seed: int = 0
    warmstart_steps: int = 600
    warmstart_batch_size: int = 32
    warmstart_lr: float = 3e-3
    warmstart_schedule: str = "constant"
    """Learning rate after the 20-step warm-up: `constant`, or `cosine` decay to 0 at the last step (a long
    warm-start then ends in a settled model, not wherever the last constant-rate steps left it)."""
    warmstart_rows_per_task: int = 2000
    warmstart_graded_share: float = 1.0
    """Share of warm-start answers in the graded format (`Task.reference`); the others use one of the
    task's ungraded `plain_answers`, so the base model often knows the answer but misses its format."""
    warmstart_tasks: list[str] = field(default_factory=lambda: ["countdown", "math", "chemistry", "boolq"])
    warmstart_knowledge_rows: int = 0
    """Knowledge questions (`esft.tasks.knowledge`, the MMLU stand-in's warm-start half), always graded: the
    base model knows the holdout's format and some of its answers before any RL, as a real one does."""


def build_tokenizer():
    """A character-level fast tokenizer with Qwen's chat special tokens; pad differs from eos."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, EOS, BOS_TURN, UNK]
    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK, additional_special_tokens=[BOS_TURN]
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def build_tiny_model(cfg: TinyModelConfig, tokenizer) -> torch.nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS_TURN),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(cfg.seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def warmstart_examples(cfg: TinyModelConfig, exclude_prompts: set[str]) -> list[tuple[list[dict], str]]:
    """(messages, answer) pairs from the task generators and the knowledge questions, never a held-out prompt.

    A task's answer is the graded reference with probability `warmstart_graded_share`, else one of the
    task's ungraded plain forms of the same answer (tasks without any always get the reference)."""
    from esft.tasks import get_task
    from esft.tasks.knowledge import warmstart_pairs

    rng = random.Random(f"warmstart-{cfg.seed}")
    formats = random.Random(f"warmstart-format-{cfg.seed}")  # own stream: rows and order do not depend on the share
    examples = []
    for name in cfg.warmstart_tasks:
        task = get_task(name)
        for row in task.generate_rows(cfg.warmstart_rows_per_task, rng):
            messages = task.messages(row)
            if task.user_prompt(row) in exclude_prompts:
                continue
            answer = task.reference(row)
            if cfg.warmstart_graded_share < 1.0:
                plain = task.plain_answers(row)
                if plain and formats.random() >= cfg.warmstart_graded_share:
                    answer = plain[formats.randrange(len(plain))]
            examples.append((messages, answer))
    knowledge = random.Random(f"warmstart-knowledge-{cfg.seed}")  # own stream: task rows do not depend on it
    examples += [([{"role": "user", "content": prompt}], answer)
                 for prompt, answer in warmstart_pairs(cfg.warmstart_knowledge_rows, knowledge)]
    rng.shuffle(examples)
    return examples


def _decay(cfg: TinyModelConfig, step: int) -> float:
    if cfg.warmstart_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / cfg.warmstart_steps))
    if cfg.warmstart_schedule == "constant":
        return 1.0
    raise EsftError(f"model.tiny.warmstart_schedule: expected constant or cosine, got {cfg.warmstart_schedule!r}")


def supervised_warmstart(model, tokenizer, cfg: TinyModelConfig, examples: list[tuple[list[dict], str]]) -> list[float]:
    """A short supervised pass on the answers only (prompt tokens masked), so base accuracy is non-trivial."""
    if not examples:
        raise EsftError("warm-start has no examples: check warmstart_tasks and the held-out prompts")
    encoded = []
    for messages, answer in examples:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        encoded.append((p_ids + a_ids, [-100] * len(p_ids) + a_ids))
    gen = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.warmstart_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20) * _decay(cfg, s))
    model.train()
    losses = []
    for step in range(cfg.warmstart_steps):
        idx = torch.randint(len(encoded), (cfg.warmstart_batch_size,), generator=gen).tolist()
        batch = [encoded[i] for i in idx]
        input_ids, mask = pad_batch([ids for ids, _ in batch], tokenizer.pad_token_id)
        labels, _ = pad_batch([lab for _, lab in batch], -100)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == cfg.warmstart_steps - 1:
            log.info("warm-start step %d/%d loss %.4f", step + 1, cfg.warmstart_steps, loss.item())
    model.eval()
    return losses


def download_model(repo_id: str, revision: str | None, out_dir: Path) -> str:
    """Snapshot the hub repo's model and tokenizer files at `revision` into `out_dir`; returns its commit."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        sha = HfApi().model_info(repo_id, revision=revision).sha
        snapshot_download(repo_id, revision=sha, local_dir=out_dir,
                          allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"])
    except Exception as err:  # network, auth and missing-repo errors have unrelated types
        message = " ".join(str(err).split())[:300]
        raise EsftError(f"cannot download {repo_id!r} (revision {revision}): {type(err).__name__}: {message}; "
                        "gated repos need HF_TOKEN in the environment") from None
    log.info("downloaded %s at %s to %s", repo_id, sha, out_dir)
    return sha


def build_base_model(source: str, out_dir: str | Path, tiny: dict[str, Any] | None = None,
                     exclude_prompts: set[str] | None = None, revision: str | None = None,
                     pad_token: str | None = None, prebuilt: str | Path | None = None) -> dict[str, Any]:
    """Write the base-model manifest to `out_dir`, and the model itself for `source: tiny` (built, or copied
    from the `prebuilt` build of the same config) or a hub id (downloaded to `out_dir/hf`); a local path is
    only pointed at. `pad_token` is recorded for tokenizers that have none (Llama 3.1) and set by
    `load_model`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"source": source}
    if pad_token:
        manifest["pad_token"] = pad_token
    if source == "tiny" and prebuilt:
        manifest = copy_prebuilt(prebuilt, out_dir, TinyModelConfig(**(tiny or {})), exclude_prompts or set())
    elif source == "tiny":
        cfg = TinyModelConfig(**(tiny or {}))
        tokenizer = build_tokenizer()
        model = build_tiny_model(cfg, tokenizer)
        losses = supervised_warmstart(model, tokenizer, cfg, warmstart_examples(cfg, exclude_prompts or set()))
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        manifest.update(
            path=".",
            config=asdict(cfg),
            parameters=sum(p.numel() for p in model.parameters()),
            warmstart_final_loss=losses[-1] if losses else None,
            held_out_sha256=held_out_digest(exclude_prompts or set()),
            weights_sha256=file_sha256(out_dir / WEIGHTS_FILE),
        )
    elif not Path(source).exists():
        manifest.update(path="hf", revision=download_model(source, revision, out_dir / "hf"))
    write_json(out_dir / "model.json", manifest)
    return manifest


WEIGHTS_FILE = "model.safetensors"


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def held_out_digest(prompts: set[str]) -> str:
    """sha256 of the sorted held-out prompts: names the prompts a warm-start was kept away from."""
    return hashlib.sha256("\n".join(sorted(prompts)).encode()).hexdigest()


def copy_prebuilt(prebuilt: str | Path, out_dir: Path, cfg: TinyModelConfig, exclude_prompts: set[str]) -> dict[str, Any]:
    """Copy a shipped build of the tiny model into `out_dir` after checking that it is the build this config
    asks for: the same tiny config, warm-started away from the same held-out prompts, weights unchanged.

    The warm-start amplifies the rounding of each machine's kernels (another CPU builds another base
    model), so the embedded default ships its build to start every machine from the same weights."""
    prebuilt = Path(prebuilt)
    found = base_manifest(prebuilt)
    if found is None or found[1].get("source") != "tiny":
        raise EsftError(f"model.prebuilt: {prebuilt} holds no tiny base model (model.json with source tiny)")
    manifest = dict(found[1])
    rebuild = "set model.prebuilt: null to build the model from its config"
    if manifest.get("config") != asdict(cfg):
        diff = sorted(k for k in asdict(cfg) if manifest.get("config", {}).get(k) != asdict(cfg)[k])
        raise EsftError(f"model.prebuilt: {prebuilt} was built with another model.tiny config (differs in "
                        f"{', '.join(diff)}); {rebuild}")
    if manifest.get("held_out_sha256") != held_out_digest(exclude_prompts):
        raise EsftError(f"model.prebuilt: {prebuilt} was warm-started away from other held-out prompts than this "
                        f"run's test splits (tasks changed?); {rebuild}")
    weights = prebuilt / WEIGHTS_FILE
    if not weights.exists() or file_sha256(weights) != manifest.get("weights_sha256"):
        raise EsftError(f"model.prebuilt: {weights} does not match the sha256 its model.json records; {rebuild}")
    for path in prebuilt.iterdir():
        if path.is_file() and path.name != "model.json":
            shutil.copyfile(path, out_dir / path.name)
    manifest["prebuilt"] = str(prebuilt)
    log.info("base model: the shipped build %s (weights sha256 %s)", prebuilt, manifest["weights_sha256"])
    return manifest


def base_manifest(base: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """(directory, model.json contents) of a base-model directory or manifest path; None otherwise."""
    base = Path(base)
    manifest_path = base / "model.json" if base.is_dir() else base
    if manifest_path.name == "model.json" and manifest_path.exists():
        return manifest_path.parent, read_json(manifest_path)
    return None


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
"""What a hub repository id looks like (NAME or ORG/NAME): anything else that does not exist is a missing path."""


def resolve_source(base: str | Path) -> str:
    """The path or hub id behind a base-model directory (or the argument itself if it is not one).

    A missing path or a directory without a model is one line naming it, not HF's complaint about a repo id."""
    found = base_manifest(base)
    if found is not None:
        directory, manifest = found
        return str(directory / manifest["path"]) if "path" in manifest else manifest["source"]
    path = Path(base)
    if path.is_dir() and not (path / "config.json").exists():
        raise EsftError(f"{base}: not a base-model directory (expected model.json, written by `esft base-model`, "
                        "or a Hugging Face model's config.json)")
    if not path.exists() and not HUB_ID.fullmatch(str(base)):
        raise EsftError(f"{base}: no such base-model directory (expected a directory with model.json, a model "
                        "directory or a hub id)")
    return str(base)


def _pretrained(loader, source: str, **kwargs):
    """`loader.from_pretrained(source)`; a model that cannot be read or fetched is one line naming it."""
    try:
        return loader.from_pretrained(source, **kwargs)
    except OSError as err:
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise EsftError(f"{source}: cannot load the model ({first})") from None


def load_model(base: str | Path, weights: str | Path | None = None, dtype: str = "float32",
               device: str = "cpu"):
    """Load (model, tokenizer) from a base-model directory, hub id or path, then `weights` on top."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(base)
    model = _pretrained(AutoModelForCausalLM, resolve_source(base), dtype=getattr(torch, dtype)).to(device)
    if weights is not None:
        load_weights(model, weights)
    model.eval()
    return model, tokenizer


def load_tokenizer(base: str | Path):
    """The tokenizer of a base-model directory, hub id or path: left padding, the manifest's pad token."""
    from transformers import AutoTokenizer

    source = resolve_source(base)
    tokenizer = _pretrained(AutoTokenizer, source)
    tokenizer.padding_side = "left"
    pad_token = (base_manifest(base) or (None, {}))[1].get("pad_token")
    if pad_token:
        tokenizer.pad_token = pad_token
    if tokenizer.pad_token_id is None:
        raise EsftError(f"{source}: the tokenizer has no pad token; set one that differs from eos")
    return tokenizer


def load_weights(model: torch.nn.Module, weights: str | Path) -> None:
    """Copy a checkpoint's tensors into `model`; every trainable parameter must be present."""
    copy_weights(model, read_weights(weights), str(weights))


def copy_weights(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy `state` (standard parameter names, any dtype) into `model`, each tensor cast to the parameter's
    dtype; `state` must name exactly the model's parameters (`source` names it in the error)."""
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(state))
    unknown = sorted(set(state) - set(params))
    if missing or unknown:
        raise EsftError(f"{source}: missing {missing[:5]} unknown {unknown[:5]} parameters")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name].to(param.dtype))
