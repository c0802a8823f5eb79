"""Model configuration (the ``model:`` section of a run config) and its self-contained checks.

Attention placement is explicit and per network: a list of ``{res, kind, ...}`` entries, each inserted after the block
whose output resolution is ``res``. SMYRF settings exist only on ``kind: smyrf`` entries, so a dense entry cannot carry
knobs that do nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal, Optional

from biggan.errors import ConfigError
from biggan.models.architectures import G_ARCHS, SUPPORTED_RESOLUTIONS

__all__ = ["AttentionConfig", "NetworkConfig", "ModelConfig", "model_config_from_dict"]

_SMYRF_KEYS = ("n_hashes", "q_cluster_size", "k_cluster_size")


@dataclass
class AttentionConfig:
    """One self-attention layer: where it goes and how it attends."""

    res: int = 64  # inserted after the block whose OUTPUT resolution is res (must be one of that network's outputs)
    kind: Literal["dense", "smyrf"] = "dense"  # dense softmax(θφᵀ)g, or SMYRF balanced-cluster attention
    n_hashes: Optional[int] = None  # smyrf only: hash rounds H
    q_cluster_size: Optional[int] = None  # smyrf only: queries per cluster cq; must divide res²
    k_cluster_size: Optional[int] = None  # smyrf only: keys per cluster ck; must divide res²/4 (keys are 2x2-pooled)
    hashing: Optional[Literal["projection", "kdtree"]] = None  # smyrf only: None/projection = the paper's hashing;
    # kdtree = a balanced k-d tree per round (lower error at equal score memory, see smyrf.hashing)

    def validate(self, where: str = "attention") -> None:
        """Kind-specific keys present exactly when they act; positive values."""
        if self.res < 2:
            raise ConfigError(f"{where}: res must be >= 2, got {self.res}")
        given = [key for key in (*_SMYRF_KEYS, "hashing") if getattr(self, key) is not None]
        if self.kind == "dense" and given:
            raise ConfigError(
                f"{where} (res {self.res}) is dense: {', '.join(given)} act only with kind: smyrf; remove them"
            )
        if self.kind == "smyrf":
            missing = [key for key in _SMYRF_KEYS if getattr(self, key) is None]
            if missing:
                raise ConfigError(f"{where} (res {self.res}) is smyrf: set {', '.join(missing)}")
            bad = [f"{key}={getattr(self, key)}" for key in _SMYRF_KEYS if getattr(self, key) < 1]
            if bad:
                raise ConfigError(f"{where} (res {self.res}): {', '.join(bad)} must be >= 1")


@dataclass
class NetworkConfig:
    """Width and attention placement of one network (G or D)."""

    ch: int = 96  # base width; block widths are multiples of it (96 in all BigGAN paper configs)
    attention: list[AttentionConfig] = field(default_factory=list)  # attention layers, by output resolution

    def validate(self, where: str) -> None:
        if self.ch < 1:
            raise ConfigError(f"{where}.ch must be >= 1, got {self.ch}")
        seen: set[int] = set()
        for i, spec in enumerate(self.attention):
            spec.validate(f"{where}.attention[{i}]")
            if spec.res in seen:
                raise ConfigError(f"{where}.attention lists res {spec.res} twice; keep one entry per resolution")
            seen.add(spec.res)


@dataclass
class ModelConfig:
    """Generator and discriminator hyper-parameters (BigGAN paper defaults, SN eps of the launch scripts).

    ``conditioning``:
    - ``zhier`` (CelebA-HQ default): hierarchical z, each block's cBN driven by its z chunk; no labels, no embedding,
      no projection term in D, so no dead parameters.
    - ``smyrf_repro``: the SMYRF CelebA-HQ run: one class, no hierarchy (z enters only at the stem), cBN through a
      one-row embedding, and a one-row projection term in D.
    - ``class``: BigGAN ImageNet: ``n_classes`` labels, G's shared embedding (``shared_dim``) concatenated with the
      z chunks, and a projection discriminator.
    """

    resolution: int = 128  # image size: 32, 64, 128 or 256
    dim_z: int = 120  # latent size; zhier/class split it into (G blocks + 1) equal chunks: 120 at 128, 140 at 256
    conditioning: Literal["zhier", "smyrf_repro", "class"] = "zhier"  # what drives cBN (see the class docstring)
    n_classes: Optional[int] = None  # class only: number of classes
    shared_dim: Optional[int] = None  # class only: width of G's shared class embedding (paper: 128)
    G: NetworkConfig = field(default_factory=NetworkConfig)  # generator width and attention
    D: NetworkConfig = field(default_factory=NetworkConfig)  # discriminator width and attention
    init: Literal["ortho", "normal", "xavier"] = "ortho"  # weight init of conv/linear/embedding (normal: N(0, 0.02))
    sn_iters: int = 1  # power iterations per training forward in every spectral norm
    sn_eps: float = 1e-6  # epsilon of the spectral-norm power iteration
    bn_eps: float = 1e-5  # epsilon of every batch norm
    smyrf_seed: int = 0  # base of the per-layer SMYRF projection seeds (fixed in eval, initial state in training)

    @property
    def hierarchical(self) -> bool:
        """True when z is split into chunks, one for the stem and one per G block."""
        return self.conditioning in ("zhier", "class")

    def num_z_chunks(self) -> int:
        return len(G_ARCHS[self.resolution].out_mults) + 1

    def validate(self) -> None:
        """Checks that need only this config; placement vs block outputs is checked by the builders."""
        if self.resolution not in SUPPORTED_RESOLUTIONS:
            raise ConfigError(
                f"model.resolution {self.resolution} is not supported; use one of {list(SUPPORTED_RESOLUTIONS)}"
            )
        if self.dim_z < 1:
            raise ConfigError(f"model.dim_z must be >= 1, got {self.dim_z}")
        if self.hierarchical and self.dim_z % self.num_z_chunks():
            chunks = self.num_z_chunks()
            fix = chunks * max(1, round(self.dim_z / chunks))
            raise ConfigError(
                f"model.dim_z {self.dim_z} does not split into {chunks} equal chunks (G-{self.resolution} has "
                f"{chunks - 1} blocks + stem) for conditioning {self.conditioning}; use a multiple of {chunks}, "
                f"e.g. {fix}"
            )
        if self.conditioning == "class":
            if self.n_classes is None or self.shared_dim is None:
                raise ConfigError(
                    "conditioning 'class' needs model.n_classes and model.shared_dim (paper: 1000 and 128)"
                )
            if self.n_classes < 1 or self.shared_dim < 1:
                raise ConfigError(
                    f"model.n_classes ({self.n_classes}) and model.shared_dim ({self.shared_dim}) must be >= 1"
                )
        else:
            extra = [key for key in ("n_classes", "shared_dim") if getattr(self, key) is not None]
            if extra:
                raise ConfigError(
                    f"model.{' and model.'.join(extra)} act only with conditioning: class "
                    f"(got {self.conditioning}); remove them"
                )
        if self.sn_iters < 1:
            raise ConfigError(f"model.sn_iters must be >= 1, got {self.sn_iters}")
        if self.sn_eps <= 0 or self.bn_eps <= 0:
            raise ConfigError(f"model.sn_eps ({self.sn_eps}) and model.bn_eps ({self.bn_eps}) must be > 0")
        self.G.validate("model.G")
        self.D.validate("model.D")


def _build(cls: type, data: Any, where: str) -> Any:
    """Strictly rebuild dataclass ``cls`` from ``dataclasses.asdict`` output (unknown keys are an error)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(known)}")
    default = cls()  # nested types are read off a default instance, not parsed from annotations
    kwargs = {}
    for name, value in data.items():
        current = getattr(default, name)
        if is_dataclass(current):
            value = _build(type(current), value, f"{where}.{name}")
        elif name == "attention":
            value = [_build(AttentionConfig, item, f"{where}.attention[{i}]") for i, item in enumerate(value)]
        kwargs[name] = value
    return cls(**kwargs)


def model_config_from_dict(data: dict) -> ModelConfig:
    """Rebuild a ModelConfig from ``dataclasses.asdict(cfg)`` (as stored in checkpoints) and validate it."""
    cfg = _build(ModelConfig, data, "model")
    cfg.validate()
    return cfg
