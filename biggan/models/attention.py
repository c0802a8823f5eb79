"""SAGAN self-attention block (Zhang et al. 2019, as released in BigGAN-PyTorch) with dense or SMYRF attention.

    out = x + gamma · o( attend( theta(x), maxpool(phi(x)), maxpool(g(x)) ) )

- theta/phi map C -> C/8 and g maps C -> C/2: the attention logits and values are computed in a narrow space (SAGAN's
  choice; it keeps the N x N/4 logit matrix cheap per entry), and o maps the C/2 result back to C.
- Keys and values are 2x2 max-pooled, so Nk = N/4. This is why SMYRF cluster sizes come in 4:1 pairs (cq = 4·ck):
  every cluster must pair Nq/nc queries with Nk/nc keys.
- No 1/sqrt(d) logit scaling (scale 1, as released), no conv biases.
- gamma starts at 0, so the block starts as the identity (and theta/phi/g/o get zero gradient until gamma moves).

``kind`` (dense | smyrf) changes only how softmax(θφᵀ)g is computed; both kinds have the same parameters and buffers,
so a checkpoint loads strictly into either, and :meth:`SelfAttention2d.configure` switches kind in place.

SMYRF projections: in eval mode they are drawn once per device and setting from a CPU generator seeded with the
layer's fixed ``eval_seed`` and reused (samples and FID repeatable, no draw or copy per forward); in training they come
from the layer's own CPU ``generator``, which advances every step and is saved via
``biggan.models.attention_rng_state``. Either way they reach the device without a host sync
(``smyrf.hashing.to_device``: pinned memory and a non-blocking copy on CUDA), and the host stream keeps the checkpointed
generator state device-independent.

Shape legend: B batch; C channels; h×w spatial; N = h·w; Nq = N queries, Nk = N/4 keys; d = C/8; dv = C/2.
"""

from __future__ import annotations

import dataclasses
import zlib

import torch
import torch.nn.functional as F
from torch import nn

from biggan.errors import ConfigError
from biggan.models.config import AttentionConfig, ModelConfig
from biggan.models.spectral_norm import SNConv2d
from smyrf import check_cluster_sizes, dense_attention, draw_projections, kdtree_levels, smyrf_attention

__all__ = ["SelfAttention2d", "check_attention_spec", "build_attention_layers", "config_with_layers"]


def check_attention_spec(spec: AttentionConfig, channels: int, where: str) -> None:
    """Raise ConfigError if ``spec`` cannot run with ``channels`` input channels at its resolution (the facts that
    need both the config and the network: the spec's own values were checked when it was made)."""
    if channels % 8:
        raise ConfigError(
            f"{where} (res {spec.res}): {channels} channels there; SAGAN attention needs a multiple of 8 "
            f"(C/8 keys, C/2 values); raise ch"
        )
    if spec.kind != "smyrf":
        return
    num_q, num_k = spec.res * spec.res, spec.res * spec.res // 4
    try:
        check_cluster_sizes(num_q, num_k, spec.q_cluster_size, spec.k_cluster_size)
    except ValueError as err:
        raise ConfigError(
            f"{where} (res {spec.res}; keys are 2x2-pooled, so k_cluster_size = q_cluster_size/4): {err}"
        ) from None


class SelfAttention2d(nn.Module):
    """SAGAN non-local block; dense or SMYRF attention with identical parameters.

    Args:
        channels: C of the input feature map (a multiple of 8).
        spec: placement and kind; checked against ``channels`` and ``spec.res`` (tokens = res²).
        eval_seed: fixed projection seed used for every SMYRF forward in eval mode.
        train_seed: initial seed of the CPU generator that SMYRF draws from in training mode.
        sn_iters, sn_eps: spectral-norm settings of the four 1x1 convs.
        where: config path for error messages (e.g. ``model.G.attention[0]``).
    """

    def __init__(
        self,
        channels: int,
        spec: AttentionConfig,
        eval_seed: int,
        train_seed: int,
        sn_iters: int,
        sn_eps: float,
        where: str,
    ) -> None:
        super().__init__()
        check_attention_spec(spec, channels, where)
        self.channels, self.res, self.where = channels, spec.res, where
        self.spec = spec
        self.eval_seed = eval_seed
        self.generator = torch.Generator().manual_seed(train_seed)  # CPU: SMYRF draws projections on the host
        self._eval_projections: dict[tuple, torch.Tensor] = {}  # (device, H, levels) -> eval-mode projections
        conv = dict(kernel_size=1, padding=0, bias=False, sn_iters=sn_iters, sn_eps=sn_eps)
        self.theta = SNConv2d(channels, channels // 8, **conv)
        self.phi = SNConv2d(channels, channels // 8, **conv)
        self.g = SNConv2d(channels, channels // 2, **conv)
        self.o = SNConv2d(channels // 2, channels, **conv)
        self.gamma = nn.Parameter(torch.zeros(()))

    def configure(self, spec: AttentionConfig) -> None:
        """Switch kind or SMYRF settings in place; weights, buffers and the generator are untouched."""
        if spec.res != self.res:
            raise ConfigError(f"{self.where}: cannot move attention from res {self.res} to {spec.res} in place")
        check_attention_spec(spec, self.channels, self.where)
        self.spec = spec

    def extra_repr(self) -> str:
        spec = self.spec
        if spec.kind == "dense":
            return f"res={self.res}, kind=dense"
        return (
            f"res={self.res}, kind=smyrf, n_hashes={spec.n_hashes}, q_cluster_size={spec.q_cluster_size}, "
            f"k_cluster_size={spec.k_cluster_size}, hashing={spec.hashing}, summary={spec.summary}"
        )

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The attention's inputs for the block input x (B, C, h, w): q (B, Nq, d), k (B, Nk, d), v (B, Nk, dv)."""
        _, _, h, w = x.shape
        if h != self.res or w != self.res:
            raise ValueError(f"{self.where}: built for {self.res}x{self.res} maps, got {h}x{w}")
        q = self.theta(x).flatten(2).transpose(1, 2)  # (B, Nq, d)
        k = F.max_pool2d(self.phi(x), 2).flatten(2).transpose(1, 2)  # (B, Nk, d)
        v = F.max_pool2d(self.g(x), 2).flatten(2).transpose(1, 2)  # (B, Nk, dv)
        return q, k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, return_clusters: bool = False):
        """softmax(q k^T) v (B, Nq, dv), dense or by SMYRF with this layer's settings and projection stream (the
        fixed eval seed in eval mode). ``return_clusters`` (SMYRF only): also SMYRF's (perm_q, perm_k)."""
        if self.spec.kind == "dense":
            return dense_attention(q, k, v, scale=1.0)  # (B, Nq, dv)
        return smyrf_attention(
            q,
            k,
            v,
            n_hashes=self.spec.n_hashes,
            q_cluster_size=self.spec.q_cluster_size,
            k_cluster_size=self.spec.k_cluster_size,
            scale=1.0,
            generator=self.generator if self.training else None,
            projections=None if self.training else self._eval_projection(q),
            hashing=self.spec.hashing,
            summary=self.spec.summary,
            return_clusters=return_clusters,
        )  # (B, Nq, dv)[, (perm_q (H, B, Nq), perm_k (H, B, Nk))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(x)
        out = self.attend(q, k, v)  # (B, Nq, dv)
        out = out.transpose(1, 2).reshape(b, c // 2, h, w)  # (B, dv, h, w)
        return x + self.gamma * self.o(out)

    def _eval_projection(self, q: torch.Tensor) -> torch.Tensor:
        """The eval-mode projections, (d+2, H[, L]) on q's device: drawn from ``eval_seed`` on first use per device and
        setting (the same values a fresh generator with that seed gives), then reused."""
        spec, d = self.spec, q.shape[-1]
        levels = kdtree_levels(q.shape[-2] // spec.q_cluster_size) if spec.hashing == "kdtree" else None
        key = (q.device, spec.n_hashes, levels)
        if key not in self._eval_projections:
            generator = torch.Generator().manual_seed(self.eval_seed)
            self._eval_projections[key] = draw_projections(d, spec.n_hashes, generator, device=q.device, levels=levels)
        return self._eval_projections[key]


def _layer_seed(network: str, res: int, purpose: str, base_seed: int) -> int:
    """A stable per-layer seed (crc32, not ``hash``, which is salted per process)."""
    return zlib.crc32(f"{network}/attention/{res}/{purpose}/{base_seed}".encode())


def build_attention_layers(
    specs: list[AttentionConfig],
    out_resolutions: tuple[int, ...],
    out_channels: tuple[int, ...],
    cfg: ModelConfig,
    network: str,
) -> tuple[nn.ModuleDict, dict[int, str]]:
    """Attention modules for one network and the block index each follows.

    A spec goes after the first block whose output resolution is ``spec.res`` (D's last blocks can share one); a
    resolution no block outputs is an error naming the valid ones: BigGAN-PyTorch silently dropped it, which is how
    "attention at 128" never reached its D-128.

    Returns: ``(layers, after)`` with layers keyed by ``str(res)`` and ``after[block_index] = str(res)``.
    """
    valid = sorted(set(out_resolutions), reverse=True)
    layers, after = nn.ModuleDict(), {}
    for i, spec in enumerate(specs):
        where = f"model.{network}.attention[{i}]"
        if spec.res not in out_resolutions:
            raise ConfigError(
                f"{where}: no {network}-{cfg.resolution} block outputs res {spec.res}; "
                f"valid attention resolutions are {valid}"
            )
        index = out_resolutions.index(spec.res)
        layers[str(spec.res)] = SelfAttention2d(
            out_channels[index],
            spec,
            eval_seed=_layer_seed(network, spec.res, "eval", cfg.smyrf_seed),
            train_seed=_layer_seed(network, spec.res, "train", cfg.smyrf_seed),
            sn_iters=cfg.sn_iters,
            sn_eps=cfg.sn_eps,
            where=where,
        )
        after[index] = str(spec.res)
    return layers, after


def config_with_layers(cfg: ModelConfig, network: str, layers: nn.ModuleDict) -> ModelConfig:
    """``cfg`` with ``network``'s attention list read from its layers (their kind/settings may have been switched)."""
    net = dataclasses.replace(getattr(cfg, network), attention=[layer.spec for layer in layers.values()])
    return dataclasses.replace(cfg, **{network: net})
