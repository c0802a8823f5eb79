"""Conditional batch norm (de Vries et al. 2017; BigGAN's ``ccbn``) and the per-mode conditioning encoders.

cBN normalises with its own batch statistics (no affine of its own) and applies a per-sample scale ``1 + gain(c)``
and shift ``bias(c)``. The "1 +" makes a zero-initialised or small gain start near identity.

What ``c`` is depends on ``model.conditioning``:
- ``zhier`` and ``class``: a vector (the block's z chunk, with the shared class embedding prepended for ``class``);
  gain and bias are SN-linears without bias.
- ``smyrf_repro``: the integer label (always 0); gain and bias are plain ``nn.Embedding(n_classes, C)`` tables, as in
  BigGAN-PyTorch with ``G_shared=False``: with one class this is a learned per-channel affine.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["ConditionalBatchNorm2d", "EncoderFactory"]

EncoderFactory = Callable[[int], nn.Module]  # num_channels -> module mapping c (B, ...) to (B, num_channels)


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose scale and shift are predicted from a conditioning input.

    Args:
        num_channels: C of the normalised feature map.
        make_encoder: builds the gain and the bias encoders (two independent modules of the same kind).
        eps: batch-norm epsilon. Momentum is PyTorch's 0.1, as in BigGAN.
    """

    def __init__(self, num_channels: int, make_encoder: EncoderFactory, eps: float) -> None:
        super().__init__()
        self.gain = make_encoder(num_channels)
        self.bias = make_encoder(num_channels)
        self.bn = nn.BatchNorm2d(num_channels, eps=eps, affine=False)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        gain = 1 + self.gain(c).reshape(x.shape[0], -1, 1, 1)  # (B, C, 1, 1)
        bias = self.bias(c).reshape(x.shape[0], -1, 1, 1)  # (B, C, 1, 1)
        return self.bn(x) * gain + bias

