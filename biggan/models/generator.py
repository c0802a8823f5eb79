"""BigGAN generator (Brock, Donahue, Simonyan, ICLR 2019), laid out as ajbrock/BigGAN-PyTorch ``Generator``.

    z -> [split into chunks if hierarchical] -> SN-linear stem (B, stem·ch, 4, 4) -> GBlocks (each 2x up, conditioned)
      -> [attention after chosen blocks] -> BN -> ReLU -> SN 3x3 conv to RGB -> tanh

Conditioning (``model.conditioning``):
- zhier: z has (blocks + 1) equal chunks; chunk 0 feeds the stem and chunk i+1 drives block i's two cBNs. No labels.
- class: as zhier, with G's shared class embedding (not spectrally normalised) prepended to every block's chunk.
- smyrf_repro: all of z feeds the stem; each cBN reads a one-row embedding table by label 0 (SMYRF's CelebA-HQ run).

Shape legend: B batch; C channels; h×w spatial size.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from biggan.models.architectures import BOTTOM_WIDTH, G_ARCHS
from biggan.models.attention import build_attention_layers, config_with_layers
from biggan.models.blocks import GBlock
from biggan.models.conditioning import EncoderFactory
from biggan.models.config import ModelConfig
from biggan.models.initialization import init_weights
from biggan.models.spectral_norm import SNConv2d, SNLinear

__all__ = ["Generator", "build_generator"]


class Generator(nn.Module):
    """``G(z, y=None) -> x``: z (B, dim_z), y (B,) long labels (needed for class only) -> x (B, 3, res, res) in [-1, 1].

    Args:
        cfg: the model config (checked when it was made); placement and cluster sizes are checked here
            against the blocks.
    """

    network_name = "G"  # which ModelConfig section (G or D) describes this network

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self._build_cfg = copy.deepcopy(cfg)
        arch = G_ARCHS[cfg.resolution]
        ch, sn = cfg.G.ch, dict(sn_iters=cfg.sn_iters, sn_eps=cfg.sn_eps)
        self.dim_z, self.conditioning = cfg.dim_z, cfg.conditioning
        self.chunk_size = cfg.dim_z // cfg.num_z_chunks() if cfg.hierarchical else cfg.dim_z

        self.shared: Optional[nn.Embedding] = None
        make_encoder: EncoderFactory
        if cfg.conditioning == "smyrf_repro":
            make_encoder = lambda width: nn.Embedding(1, width)  # noqa: E731  (label 0 -> learned per-channel affine)
        else:
            cond_dim = self.chunk_size
            if cfg.conditioning == "class":
                # No SN on the shared embedding: "SN on G's embedding seems to randomly cripple G" (BigGAN-PyTorch).
                self.shared = nn.Embedding(cfg.n_classes, cfg.shared_dim)
                cond_dim += cfg.shared_dim
            make_encoder = lambda width: SNLinear(cond_dim, width, bias=False, **sn)  # noqa: E731

        in_mults, out_mults = arch.in_mults(), arch.out_mults
        self.stem_channels = arch.stem_mult * ch
        self.linear = SNLinear(self.chunk_size, self.stem_channels * BOTTOM_WIDTH**2, **sn)
        self.blocks = nn.ModuleList(
            GBlock(i * ch, o * ch, make_encoder, cfg.bn_eps, **sn) for i, o in zip(in_mults, out_mults)
        )
        out_channels = tuple(m * ch for m in out_mults)
        self.attention, self.attention_after = build_attention_layers(
            cfg.G.attention, arch.out_resolutions(), out_channels, cfg, "G"
        )
        self.out_bn = nn.BatchNorm2d(out_channels[-1], eps=cfg.bn_eps)  # plain BN: the RGB stage is unconditional
        self.out_conv = SNConv2d(out_channels[-1], 3, 3, padding=1, **sn)
        init_weights(self, cfg.init)

    @property
    def cfg(self) -> ModelConfig:
        """The model config this network follows now: its build config with the attention layers' current settings."""
        return config_with_layers(self._build_cfg, self.network_name, self.attention)

    def _conditions(self, z: torch.Tensor, y: Optional[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Split the inputs into the stem input and one conditioning input per block."""
        num_blocks = len(self.blocks)
        if self.conditioning == "smyrf_repro":
            label = y if y is not None else torch.zeros(z.shape[0], dtype=torch.long, device=z.device)  # (B,)
            return z, [label] * num_blocks
        chunks = z.split(self.chunk_size, dim=1)  # blocks + 1 tensors of (B, chunk)
        conds = list(chunks[1:])
        if self.shared is not None:
            if y is None:
                raise ValueError("conditioning 'class' needs labels: call G(z, y) with y of shape (B,)")
            shared = self.shared(y)  # (B, shared_dim)
            conds = [torch.cat([shared, c], dim=1) for c in conds]  # (B, shared_dim + chunk) each
        return chunks[0], conds

    def forward(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.dim_z:
            raise ValueError(f"G expects z of shape (B, {self.dim_z}), got {tuple(z.shape)}")
        stem_in, conds = self._conditions(z, y)
        h = self.linear(stem_in).reshape(z.shape[0], self.stem_channels, BOTTOM_WIDTH, BOTTOM_WIDTH)  # (B, C, 4, 4)
        for index, block in enumerate(self.blocks):
            h = block(h, conds[index])
            if index in self.attention_after:
                h = self.attention[self.attention_after[index]](h)
        h = F.relu(self.out_bn(h))
        return torch.tanh(self.out_conv(h))  # (B, 3, res, res)


def build_generator(cfg: ModelConfig) -> Generator:
    """Build G from a model config; raises ConfigError on bad placement, cluster sizes or dim_z."""
    return Generator(cfg)
