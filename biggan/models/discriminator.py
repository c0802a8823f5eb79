"""BigGAN discriminator (Brock et al. 2019), laid out as ajbrock/BigGAN-PyTorch ``Discriminator``.

    x -> DBlocks (2x down except the last) -> [attention after chosen blocks] -> ReLU -> global SUM pool (B, C)
      -> SN-linear to one logit [+ <SN-embedding(y), h>, the projection term (Miyato & Koyama 2018)]

The projection term exists for ``class`` (n_classes rows) and ``smyrf_repro`` (one row, label 0, as in the SMYRF run);
``zhier`` has no labels and so no projection.

Shape legend: B batch; C channels; h×w spatial size.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from biggan.models.architectures import D_ARCHS
from biggan.models.attention import build_attention_layers, config_with_layers
from biggan.models.blocks import DBlock
from biggan.models.config import ModelConfig
from biggan.models.initialization import init_weights
from biggan.models.spectral_norm import SNEmbedding, SNLinear

__all__ = ["Discriminator", "build_discriminator"]


class Discriminator(nn.Module):
    """``D(x, y=None) -> (B,)`` logits; x (B, 3, res, res) in [-1, 1], y (B,) long labels (needed for class only).

    Args:
        cfg: the model config (checked when it was made); placement and cluster sizes are checked here
            against the blocks.
    """

    network_name = "D"  # which ModelConfig section (G or D) describes this network

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self._build_cfg = copy.deepcopy(cfg)
        arch = D_ARCHS[cfg.resolution]
        ch, sn = cfg.D.ch, dict(sn_iters=cfg.sn_iters, sn_eps=cfg.sn_eps)
        self.resolution, self.conditioning = cfg.resolution, cfg.conditioning
        out_channels = tuple(m * ch for m in arch.out_mults)
        in_channels = (3,) + out_channels[:-1]
        self.blocks = nn.ModuleList(
            DBlock(i, o, down, first=index == 0, **sn)
            for index, (i, o, down) in enumerate(zip(in_channels, out_channels, arch.downsample))
        )
        self.attention, self.attention_after = build_attention_layers(
            cfg.D.attention, arch.out_resolutions(), out_channels, cfg, "D"
        )
        self.linear = SNLinear(out_channels[-1], 1, **sn)
        self.embed: Optional[SNEmbedding] = None
        if cfg.conditioning == "class":
            self.embed = SNEmbedding(cfg.n_classes, out_channels[-1], **sn)
        elif cfg.conditioning == "smyrf_repro":
            self.embed = SNEmbedding(1, out_channels[-1], **sn)
        init_weights(self, cfg.init)

    @property
    def cfg(self) -> ModelConfig:
        """The model config this network follows now: its build config with the attention layers' current settings."""
        return config_with_layers(self._build_cfg, self.network_name, self.attention)

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, self.resolution, self.resolution):
            raise ValueError(f"D expects x of shape (B, 3, {self.resolution}, {self.resolution}), got {tuple(x.shape)}")
        h = x
        for index, block in enumerate(self.blocks):
            h = block(h)
            if index in self.attention_after:
                h = self.attention[self.attention_after[index]](h)
        h = F.relu(h).sum(dim=(2, 3))  # (B, C): sum, not mean, pooling, as released
        out = self.linear(h).squeeze(1)  # (B,)
        if self.embed is not None:
            if y is None:
                if self.conditioning == "class":
                    raise ValueError("conditioning 'class' needs labels: call D(x, y) with y of shape (B,)")
                y = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)  # (B,)
            out = out + (self.embed(y) * h).sum(dim=1)  # (B,)
        return out


def build_discriminator(cfg: ModelConfig) -> Discriminator:
    """Build D from a model config; raises ConfigError on bad placement or cluster sizes."""
    return Discriminator(cfg)
