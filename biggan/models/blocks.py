"""BigGAN residual blocks (Brock et al. 2019, fig. 15; BigGAN-PyTorch ``GBlock``/``DBlock``). Every conv is SN.

GBlock: cBN -> ReLU -> 2x nearest upsample -> 3x3 conv -> cBN -> ReLU -> 3x3 conv, plus upsample -> 1x1 conv shortcut
(learnable because every G block upsamples and most change width).

DBlock ("wide": hidden width = output width): [ReLU] -> 3x3 conv -> ReLU -> 3x3 conv -> [2x2 avg-pool], plus a shortcut
that is a 1x1 conv (with the pool) when the shape changes and the identity otherwise. Block 0 sees RGB, so it skips the
pre-activation ReLU and pools *before* its shortcut conv (4x cheaper on the full-resolution input); the other blocks
convolve then pool, as released.

Shape legend: B batch; C channels; h×w spatial size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from biggan.models.conditioning import ConditionalBatchNorm2d, EncoderFactory
from biggan.models.spectral_norm import SNConv2d

__all__ = ["GBlock", "DBlock", "upsample_nearest2x"]


def upsample_nearest2x(x: torch.Tensor) -> torch.Tensor:
    """2x nearest-neighbour upsampling, (B, C, h, w) -> (B, C, 2h, 2w), equal to ``F.interpolate(mode="nearest")``.

    Written as expand + reshape because torch-xla 2.9 has no device lowering for the backward of
    ``upsample_nearest2d``: it would run on the host and read tensors back every step. The backward of ``expand`` is a
    sum, which every backend lowers.
    """
    b, c, h, w = x.shape
    return x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)  # (B, C, 2h, 2w)


class GBlock(nn.Module):
    """Up-block of the generator: (B, in, h, w), c -> (B, out, 2h, 2w)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        make_encoder: EncoderFactory,
        bn_eps: float,
        sn_iters: int,
        sn_eps: float,
    ) -> None:
        super().__init__()
        sn = dict(sn_iters=sn_iters, sn_eps=sn_eps)
        self.bn1 = ConditionalBatchNorm2d(in_channels, make_encoder, bn_eps)
        # No bias: bn2 subtracts the batch mean right after, so a bias here would be a dead parameter (BigGAN-PyTorch
        # has one; it receives only rounding-noise gradients).
        self.conv1 = SNConv2d(in_channels, out_channels, 3, padding=1, bias=False, **sn)
        self.bn2 = ConditionalBatchNorm2d(out_channels, make_encoder, bn_eps)
        self.conv2 = SNConv2d(out_channels, out_channels, 3, padding=1, **sn)
        self.conv_sc = SNConv2d(in_channels, out_channels, 1, padding=0, **sn)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(x, c))
        h = upsample_nearest2x(h)  # (B, in, 2h, 2w)
        h = self.conv1(h)
        h = self.conv2(F.relu(self.bn2(h, c)))
        shortcut = self.conv_sc(upsample_nearest2x(x))  # (B, out, 2h, 2w)
        return h + shortcut


class DBlock(nn.Module):
    """Down-block of the discriminator: (B, in, h, w) -> (B, out, h/2 or h, ...)."""

    def __init__(
        self, in_channels: int, out_channels: int, downsample: bool, first: bool, sn_iters: int, sn_eps: float
    ) -> None:
        super().__init__()
        sn = dict(sn_iters=sn_iters, sn_eps=sn_eps)
        self.downsample, self.first = downsample, first
        self.conv1 = SNConv2d(in_channels, out_channels, 3, padding=1, **sn)
        self.conv2 = SNConv2d(out_channels, out_channels, 3, padding=1, **sn)
        learnable_sc = in_channels != out_channels or downsample
        self.conv_sc = SNConv2d(in_channels, out_channels, 1, padding=0, **sn) if learnable_sc else None

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2) if self.downsample else x

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_sc is None:
            return x
        if self.first:
            return self.conv_sc(self._pool(x))
        return self._pool(self.conv_sc(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Out-of-place ReLU: x is still needed, un-activated, by the shortcut.
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))
        return self._pool(h) + self._shortcut(x)
