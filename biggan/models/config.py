"""Model configuration (the ``model:`` section of a run config) and its self-contained checks.

Attention placement is explicit and per network: a list of ``{res, kind, ...}`` entries, each inserted after the block
whose output resolution is ``res``. SMYRF settings exist only on ``kind: smyrf`` entries, so a dense entry cannot carry
knobs that do nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from biggan.config import Section, from_dict, number
from biggan.errors import ConfigError
from biggan.models.architectures import G_ARCHS, SUPPORTED_RESOLUTIONS

__all__ = ["AttentionConfig", "NetworkConfig", "ModelConfig", "model_config_from_dict", "architecture_differences"]

_SMYRF_KEYS = ("n_hashes", "q_cluster_size", "k_cluster_size")


@dataclass
class AttentionConfig(Section):
    """One self-attention layer: where it goes and how it attends."""

    where = "attention"

    res: int = number(64, ge=2)  # inserted after the block whose OUTPUT resolution is res (one of that network's)
    kind: Literal["dense", "smyrf"] = "dense"  # dense softmax(θφᵀ)g, or SMYRF balanced-cluster attention
    n_hashes: Optional[int] = number(None, ge=1)  # smyrf only: hash rounds H
    q_cluster_size: Optional[int] = number(None, ge=1)  # smyrf only: queries per cluster cq; must divide res²
    k_cluster_size: Optional[int] = number(None, ge=1)  # smyrf only: keys per cluster ck; must divide res²/4 (keys
    # are 2x2-pooled)
    hashing: Literal["projection", "kdtree"] = "projection"  # smyrf only: the paper's one projection per round, or
    # a balanced k-d tree per round (lower error at equal score memory, see smyrf.hashing)
    summary: Literal["none", "mean", "taylor"] = "none"  # smyrf only: none = the paper's; mean/taylor = each query
    # also attends one summary of every cluster it missed (smyrf.summary; error on real attention in the README)

    def check(self, where: str) -> None:
        """Kind-specific keys present exactly when they act."""
        given = [key for key in _SMYRF_KEYS if getattr(self, key) is not None]
        given += ["hashing"] if self.hashing != "projection" else []
        given += ["summary"] if self.summary != "none" else []
        if self.kind == "dense" and given:
            raise ConfigError(
                f"{where} (res {self.res}) is dense: {', '.join(given)} act only with kind: smyrf; remove them"
            )
        if self.kind == "smyrf":
            missing = [key for key in _SMYRF_KEYS if getattr(self, key) is None]
            if missing:
                raise ConfigError(f"{where} (res {self.res}) is smyrf: set {', '.join(missing)}")


@dataclass
class NetworkConfig(Section):
    """Width and attention placement of one network (G or D)."""

    where = "network"

    ch: int = number(96, ge=1)  # base width; block widths are multiples of it (96 in all BigGAN paper configs)
    attention: list[AttentionConfig] = field(default_factory=list)  # attention layers, by output resolution

    def check(self, where: str) -> None:
        seen: set[int] = set()
        for spec in self.attention:
            if spec.res in seen:
                raise ConfigError(f"{where}.attention lists res {spec.res} twice; keep one entry per resolution")
            seen.add(spec.res)


@dataclass
class ModelConfig(Section):
    """Generator and discriminator hyper-parameters (BigGAN paper defaults, SN eps of the launch scripts).

    ``conditioning``:
    - ``zhier`` (CelebA-HQ default): hierarchical z, each block's cBN driven by its z chunk; no labels, no embedding,
      no projection term in D, so no dead parameters.
    - ``smyrf_repro``: the SMYRF CelebA-HQ run: one class, no hierarchy (z enters only at the stem), cBN through a
      one-row embedding, and a one-row projection term in D.
    - ``class``: BigGAN ImageNet: ``n_classes`` labels, G's shared embedding (``shared_dim``) concatenated with the
      z chunks, and a projection discriminator.
    """

    where = "model"

    resolution: int = number(128, ge=1)  # image size: 32, 64, 128 or 256
    dim_z: int = number(120, ge=1)  # latent size; zhier/class split it into (G blocks + 1) equal chunks: 120 at 128,
    # 140 at 256
    conditioning: Literal["zhier", "smyrf_repro", "class"] = "zhier"  # what drives cBN (see the class docstring)
    n_classes: Optional[int] = number(None, ge=1)  # class only: number of classes
    shared_dim: Optional[int] = number(None, ge=1)  # class only: width of G's shared class embedding (paper: 128)
    G: NetworkConfig = field(default_factory=NetworkConfig)  # generator width and attention
    D: NetworkConfig = field(default_factory=NetworkConfig)  # discriminator width and attention
    init: Literal["ortho", "normal", "xavier"] = "ortho"  # weight init of conv/linear/embedding (normal: N(0, 0.02))
    sn_iters: int = number(1, ge=1)  # power iterations per training forward in every spectral norm
    sn_eps: float = number(1e-6, gt=0)  # epsilon of the spectral-norm power iteration
    bn_eps: float = number(1e-5, gt=0)  # epsilon of every batch norm
    smyrf_seed: int = number(0, ge=0)  # base of the per-layer SMYRF projection seeds (fixed in eval, initial state in
    # training)

    @property
    def hierarchical(self) -> bool:
        """True when z is split into chunks, one for the stem and one per G block."""
        return self.conditioning in ("zhier", "class")

    def num_z_chunks(self) -> int:
        return len(G_ARCHS[self.resolution].out_mults) + 1

    def check(self, where: str) -> None:
        """Rules between this section's fields; placement vs block outputs is checked by the builders."""
        if self.resolution not in SUPPORTED_RESOLUTIONS:
            raise ConfigError(
                f"{where}.resolution {self.resolution} is not supported; use one of {list(SUPPORTED_RESOLUTIONS)}"
            )
        if self.hierarchical and self.dim_z % self.num_z_chunks():
            chunks = self.num_z_chunks()
            fix = chunks * max(1, round(self.dim_z / chunks))
            raise ConfigError(
                f"{where}.dim_z {self.dim_z} does not split into {chunks} equal chunks (G-{self.resolution} has "
                f"{chunks - 1} blocks + stem) for conditioning {self.conditioning}; use a multiple of {chunks}, "
                f"e.g. {fix}"
            )
        if self.conditioning == "class":
            if self.n_classes is None or self.shared_dim is None:
                raise ConfigError(
                    f"conditioning 'class' needs {where}.n_classes and {where}.shared_dim (paper: 1000 and 128)"
                )
        else:
            extra = [key for key in ("n_classes", "shared_dim") if getattr(self, key) is not None]
            if extra:
                raise ConfigError(
                    f"{where}.{f' and {where}.'.join(extra)} act only with conditioning: class "
                    f"(got {self.conditioning}); remove them"
                )


def model_config_from_dict(data: dict) -> ModelConfig:
    """Rebuild a ModelConfig from ``to_dict(cfg)`` (as stored in checkpoints), strictly, with the one loader."""
    return from_dict(ModelConfig, data, "model")


# The fields that decide parameter and buffer shapes. Attention kind and SMYRF settings, sn_iters, the epsilons, init and
# smyrf_seed do not: weights trained under one value load under another (dense-trained attention runs as SMYRF).
_SHAPE_FIELDS = ("resolution", "dim_z", "conditioning", "n_classes", "shared_dim")


def architecture_differences(a: ModelConfig, b: ModelConfig, networks: tuple[str, ...] = ("G", "D")) -> list[str]:
    """Where ``a`` and ``b`` build networks of different shapes: ``["model.G.ch 96 vs 64", ...]`` (empty: the same).

    Args:
        networks: which networks' widths and attention resolutions count (``("G",)`` when only G's weights load).
    """
    out = [f"model.{name} {getattr(a, name)} vs {getattr(b, name)}"
           for name in _SHAPE_FIELDS if getattr(a, name) != getattr(b, name)]
    for net in networks:
        net_a, net_b = getattr(a, net), getattr(b, net)
        if net_a.ch != net_b.ch:
            out.append(f"model.{net}.ch {net_a.ch} vs {net_b.ch}")
        res_a, res_b = sorted(s.res for s in net_a.attention), sorted(s.res for s in net_b.attention)
        if res_a != res_b:
            out.append(f"model.{net}.attention at res {res_a or 'none'} vs {res_b or 'none'}")
    return out
