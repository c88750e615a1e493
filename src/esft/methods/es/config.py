"""ES hyperparameters: explicit dataclasses, validated on construction.

Every field has a default that reproduces plain z-scored ES (θ ← θ + α/N Σ zᵢεᵢ on all parameters);
each option switches on one variant used by a seed study.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from esft.errors import EsftError
from esft.params import GROUPS
from esft.rollout.scoring import MAX_LENGTH
from esft.rollout.vllm_backend import VllmOptions

Shaping = Literal["zscore", "rank", "raw"]
Step = Literal["standard", "nes", "nes_group"]
Antithetic = Literal["none", "signed", "mirrored", "paired"]
LoglikAverage = Literal["sample", "token"]
FitnessKind = Literal["task", "loglik", "random"]
Mode = Literal["inplace", "batched", "lowrank"]
Placement = Literal["model", "cpu"]
Backend = Literal["hf", "vllm"]


def _reject_unknown(cls: type, cfg: dict[str, Any], where: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise EsftError(f"unknown {where} option(s) {unknown}; allowed: {sorted(known)}")


@dataclass(frozen=True)
class LoRAConfig:
    """ES over LoRA adapters: only A and B evolve, one of them per iteration."""

    r: int = 8
    alpha: float = 16.0
    """LoRA scaling numerator: the adapter adds (alpha / r)·B·A to each target weight."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    order: str = "BA"
    """Phase pattern over iterations: iteration t evolves order[t mod len(order)] ('A' or 'B'). B starts
    at zero, and while it is zero a perturbation of A alone does not change the model at all (all
    members tie): start with B. The blog's code (Bhoy1/ES_LLM_1, cvllm3.py) alternates starting with A."""
    normalize: bool = False
    """Rescale each adapter tensor's step to RMS α per entry (α·α_g, before any NES division), so the
    step size does not depend on the scale of the shaped fitness or of the noise sum. Our option: the
    blog's code applies the plain step α/N Σ zᵢεᵢ (false here)."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise EsftError(f"es.lora.r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise EsftError(f"es.lora.alpha must be > 0, got {self.alpha}")
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            raise EsftError("es.lora.target_modules must be a non-empty list of module names")
        if not self.order or set(self.order) != {"A", "B"}:
            raise EsftError(f"es.lora.order must use both 'A' and 'B' and nothing else, got {self.order!r}")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> LoRAConfig:
        _reject_unknown(cls, cfg, "es.lora")
        return cls(**cfg)


@dataclass(frozen=True)
class ESConfig:
    population: int = 30
    """N, members (model evaluations) per iteration; with antithetic pairs, N/2 directions ±ε."""
    sigma: float = 0.0015
    """Perturbation scale σ₀: a member's weights are θ + σ_t·σ_g·ε, ε ~ N(0, I)."""
    alpha: float = 0.00075
    """Step size α₀: θ ← θ + α_t·α_g/N Σ wᵢ εᵢ (divided by σ_t·σ_g for the NES step)."""
    iterations: int = 100
    batch_size: int | None = None
    """Prompts (or corpus texts) per iteration, the same for every member; None uses all rows."""
    shaping: Shaping = "zscore"
    """zscore (population std, denominator N), centred rank 2·rank/(N−1) − 1, or raw fitness."""
    step: Step = "standard"
    """standard: α/N Σ wᵢεᵢ; nes (EA4LLM eq. 14): α/(Nσ_t) Σ wᵢεᵢ, the NES gradient estimate times α;
    nes_group: α/(Nσ_t·σ_g) Σ wᵢεᵢ, divided by each group's actual noise scale (= nes without group_sigma)."""
    antithetic: Antithetic = "none"
    """Members 2k and 2k+1 use +ε_k and −ε_k. signed (EA4LLM eq. 10): the signed fitness values sⱼ·Fⱼ
    are shaped together, a pair contributing (shape(s·F)⁺ + shape(s·F)⁻)·ε_k. mirrored: the N fitness
    values are shaped together and each weight multiplies its member's signed direction, a pair
    contributing (w⁺ − w⁻)·ε_k. paired (minibatch ES): the
    pair differences F(θ+σε_k) − F(θ−σε_k) are shaped, so raw shaping with the NES step gives
    θ ← θ + α·1/(2Pσ) Σ_k (F⁺_k − F⁻_k) ε_k with P = N/2 pairs."""
    group_alpha: dict[str, float] = field(default_factory=dict)
    """α_g per parameter group (emb, attn, mlp, norm, head); a group left out uses 1."""
    group_sigma: dict[str, float] = field(default_factory=dict)
    """σ_g per parameter group; a group left out uses 1."""
    alpha_decay: float = 1.0
    """γ of the step-decay schedule α_t = α₀·γ^⌊t/S⌋."""
    alpha_decay_every: int = 1
    """S of the α schedule, in iterations."""
    sigma_decay: float = 1.0
    """γ of σ_t = σ₀·γ^⌊t/S⌋."""
    sigma_decay_every: int = 1
    fitness: FitnessKind = "task"
    """task: mean reward of greedy completions; loglik: mean token log-likelihood of a text corpus;
    random: i.i.d. N(0, 1) per member, independent of θ (a flat landscape, for Proposition 1)."""
    loglik_average: LoglikAverage = "sample"
    """loglik fitness: sample (EA4LLM eqs. 2-3) averages each text's token log-likelihoods, then the
    texts; token pools every scored token of the minibatch, so long texts weigh more."""
    text_length: int = MAX_LENGTH
    """loglik fitness: tokens kept of each text, eos included (EA4LLM §4.1 scores samples of length 256)."""
    lora: LoRAConfig | None = None
    """Evolve LoRA adapters instead of the full parameters."""
    temperature: float = 0.0
    """Generation temperature of task fitness: 0 is greedy; > 0 samples (softmax, no top-k) with one
    sampling seed per iteration shared by every member (common random numbers)."""
    top_p: float = 1.0
    """Sampled task fitness: draw from the nucleus of mass top_p (the paper's authors: 0.95 at temperature 1;
    1 keeps the whole distribution)."""
    mode: Mode = "inplace"
    """Population evaluation: inplace (one member at a time, any model), batched (many members per
    generation pass, member offsets inside the forward; Qwen3, Qwen2 and Llama models) or
    lowrank (EGGROLL: rank-r antithetic matrix directions AᵢBᵢᵀ/√r, batched likewise)."""
    rank: int = 1
    """lowrank: rank r of each member's matrix directions."""
    members_per_pass: int | None = None
    """batched/lowrank: at most this many members per generation pass (None: as many as
    generation_batch_size allows); bounds the member weights a pass builds."""
    max_rollouts: int | None = None
    """Stop after the iteration whose cumulative rollouts (completions generated) reach this (None: no bound)."""
    max_tokens: int | None = None
    """Stop after the iteration whose cumulative generated tokens reach this (None: no bound)."""
    max_prompt_tokens: int | None = None
    """Stop after the iteration whose cumulative prompt tokens (the tokens a loglik fitness scores) reach
    this (None: no bound): ES pretraining and its AdamW baseline stopped at equal tokens scored."""
    seed: int = 0
    """Keys the noise and the minibatches (with the run's identity); a run is a function of this seed
    and its inputs."""
    generation_batch_size: int = 64
    """Rows per forward pass, whose KV cache is sized to them: prompts per generate call (inplace), members ×
    prompts per pass (batched, lowrank: `esft.methods.es.batched.pass_shape`), texts per scoring batch (loglik).
    Greedy completions, hence task fitness, do not depend on it."""
    checkpoint_every: int = 10
    """Iterations between resumable state snapshots."""
    master_device: Placement = "model"
    """Where the fp32 master θ lives: model (the model's device) or cpu (pinned host memory, copied to the
    device per tensor; bitwise the same run, see esft.methods.es.population). Frees 4 bytes per parameter on a GPU."""
    theta0_device: Placement = "model"
    """Where θ_0 (the drift log's reference, in the model's dtype) lives: model or cpu."""
    backend: Backend = "hf"
    """Who generates: hf (transformers on the model's device) or vllm (a vLLM engine per process, on its own
    device, whose fused tensors are perturbed in place, esft.methods.es.vllm_trainer; mode inplace, fitness task, no
    LoRA)."""
    vllm: VllmOptions = field(default_factory=VllmOptions)
    """Engine options of backend vllm."""

    def __post_init__(self) -> None:
        if self.population < 2:
            raise EsftError(f"es.population must be >= 2, got {self.population}")
        if self.sigma <= 0 or self.alpha <= 0:
            raise EsftError("es.sigma and es.alpha must be > 0")
        if self.iterations < 0:
            raise EsftError(f"es.iterations must be >= 0, got {self.iterations}")
        if self.batch_size is not None and self.batch_size < 1:
            raise EsftError(f"es.batch_size must be >= 1 or null, got {self.batch_size}")
        for name, value, allowed in [("shaping", self.shaping, ("zscore", "rank", "raw")),
                                     ("step", self.step, ("standard", "nes", "nes_group")),
                                     ("antithetic", self.antithetic, ("none", "signed", "mirrored", "paired")),
                                     ("loglik_average", self.loglik_average, ("sample", "token")),
                                     ("fitness", self.fitness, ("task", "loglik", "random"))]:
            if value not in allowed:
                raise EsftError(f"es.{name} must be one of {', '.join(allowed)}; got {value!r}")
        if self.mode not in ("inplace", "batched", "lowrank"):
            raise EsftError(f"es.mode must be one of inplace, batched, lowrank; got {self.mode!r}")
        if self.text_length < 2:
            raise EsftError(f"es.text_length must be >= 2 (a token and eos), got {self.text_length}")
        if self.rank < 1 or (self.members_per_pass is not None and self.members_per_pass < 1):
            raise EsftError("es.rank and es.members_per_pass must be >= 1")
        if self.mode != "inplace" and (self.fitness != "task" or self.lora is not None):
            raise EsftError(f"es.mode {self.mode} evaluates generation rewards of full-parameter members: "
                            "use mode inplace with fitness loglik/random or lora")
        if self.temperature < 0:
            raise EsftError(f"es.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise EsftError(f"es.top_p must be in (0, 1], got {self.top_p}")
        if self.top_p < 1 and self.temperature == 0:
            raise EsftError("es.top_p < 1 truncates sampling: set es.temperature > 0 (0 decodes greedily)")
        if self.temperature > 0 and (self.mode != "inplace" or self.fitness != "task"):
            raise EsftError("es.temperature > 0 samples task completions in mode inplace only "
                            "(the batched decoder is greedy)")
        if self.mode == "lowrank" and self.antithetic != "none":
            raise EsftError("es.mode lowrank is antithetic by construction (members 2k, 2k+1 use ±AₖBₖᵀ) and "
                            "shapes each member's own fitness: leave es.antithetic none")
        if self.antithetic != "none" and self.population % 2:
            raise EsftError(f"es.antithetic needs an even population, got {self.population}")
        if self.antithetic == "paired" and self.population < 4 and self.shaping != "raw":
            raise EsftError("es.antithetic: paired with shaping needs at least 2 pairs (population >= 4)")
        for name, multipliers in [("group_alpha", self.group_alpha), ("group_sigma", self.group_sigma)]:
            unknown = sorted(set(multipliers) - set(GROUPS))
            if unknown:
                raise EsftError(f"es.{name}: unknown group(s) {unknown}; groups: {', '.join(GROUPS)}")
            if any(not v > 0 for v in multipliers.values()):
                raise EsftError(f"es.{name}: multipliers must be > 0")
        for name in ("alpha", "sigma"):
            if not getattr(self, f"{name}_decay") > 0:
                raise EsftError(f"es.{name}_decay must be > 0")
            if getattr(self, f"{name}_decay_every") < 1:
                raise EsftError(f"es.{name}_decay_every must be >= 1")
        for name in ("max_rollouts", "max_tokens", "max_prompt_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise EsftError(f"es.{name} must be >= 1 or null, got {getattr(self, name)}")
        if self.checkpoint_every < 1:
            raise EsftError(f"es.checkpoint_every must be >= 1, got {self.checkpoint_every}")
        for name in ("master_device", "theta0_device"):
            if getattr(self, name) not in ("model", "cpu"):
                raise EsftError(f"es.{name} must be model or cpu, got {getattr(self, name)!r}")
        if self.backend not in ("hf", "vllm"):
            raise EsftError(f"es.backend must be hf or vllm, got {self.backend!r}")
        if self.backend == "vllm" and (self.mode != "inplace" or self.fitness != "task" or self.lora is not None):
            raise EsftError("es.backend vllm evaluates members in place on generation rewards of all parameters: "
                            "use mode inplace, fitness task and no lora")
        if self.master_device == "cpu" and self.mode != "inplace":
            raise EsftError(f"es.master_device cpu needs mode inplace (mode {self.mode} builds every member's "
                            "weights from the master on the model's device)")

    def alpha_at(self, iteration: int) -> float:
        """α_t = α₀·γ^⌊t/S⌋."""
        return self.alpha * self.alpha_decay ** (iteration // self.alpha_decay_every)

    def sigma_at(self, iteration: int) -> float:
        """σ_t = σ₀·γ^⌊t/S⌋."""
        return self.sigma * self.sigma_decay ** (iteration // self.sigma_decay_every)

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> ESConfig:
        _reject_unknown(cls, cfg, "es")
        cfg = dict(cfg)
        if cfg.get("lora") is not None:
            cfg["lora"] = LoRAConfig.from_dict(cfg["lora"])
        if "vllm" in cfg:
            cfg["vllm"] = VllmOptions.from_dict(cfg["vllm"])
        return cls(**cfg)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.lora is not None:
            out["lora"]["target_modules"] = list(self.lora.target_modules)
        return out
