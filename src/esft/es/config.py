"""ES hyperparameters, one dataclass, validated on construction."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from esft.errors import EsftError
Shaping = Literal["zscore", "rank", "raw"]


@dataclass(frozen=True)
class ESConfig:
    population: int = 30
    """N, members per iteration."""
    sigma: float = 0.0015
    """Perturbation scale: a member's weights are θ + σ·ε, ε ~ N(0, I)."""
    alpha: float = 0.00075
    """Step size: θ ← θ + α/N Σ wᵢ εᵢ."""
    iterations: int = 100
    batch_size: int | None = None
    """Prompts per iteration, the same for every member; None uses the whole train split."""
    shaping: Shaping = "zscore"
    seed: int = 0
    """Keys the noise and the minibatches; a run is a function of this seed and its inputs."""
    generation_batch_size: int = 64
    checkpoint_every: int = 10
    """Iterations between resumable state snapshots."""

    def __post_init__(self) -> None:
        if self.population < 2:
            raise EsftError(f"es.population must be >= 2, got {self.population}")
        if self.sigma <= 0 or self.alpha <= 0:
            raise EsftError("es.sigma and es.alpha must be > 0")
        if self.iterations < 0:
            raise EsftError(f"es.iterations must be >= 0, got {self.iterations}")
        if self.batch_size is not None and self.batch_size < 1:
            raise EsftError(f"es.batch_size must be >= 1 or null, got {self.batch_size}")
        if self.shaping not in ("zscore", "rank", "raw"):
            raise EsftError(f"es.shaping must be zscore, rank or raw, got {self.shaping!r}")
        if self.checkpoint_every < 1:
            raise EsftError(f"es.checkpoint_every must be >= 1, got {self.checkpoint_every}")

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> ESConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise EsftError(f"unknown es option(s) {unknown}; allowed: {sorted(known)}")
        return cls(**cfg)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
