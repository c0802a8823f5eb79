"""Batched generation in eval mode: BN running statistics, fixed SMYRF projection seeds, no SN power-iteration update.

So samples never change training state or consume training randomness.

Shape legend: B batch; h×w spatial size.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

__all__ = ["generate"]


@torch.no_grad()
def generate(G: nn.Module, z: Tensor, batch_size: int, device: torch.device, y: Optional[Tensor] = None,
             place: Optional[Callable[[Tensor], Tensor]] = None, to_host: bool = True) -> Tensor:
    """G(z) in eval mode, ``batch_size`` rows at a time; (B, 3, h, w) float tensor in [-1, 1], on the CPU (for files
    and grids) or, with ``to_host=False``, left on the device (FID: the extractor reads it there, no round trip through
    the host). Restores G's mode.

    ``place`` puts a host batch of z (or y) on the device; default ``.to(device)``. The trainer passes
    ``runtime.shard_batch``, so under SPMD every device generates its own rows rather than all of them.
    """
    place = place or (lambda t: t.to(device))
    was_training = G.training
    G.eval()
    try:
        out = []
        for start in range(0, z.shape[0], batch_size):
            z_b = place(z[start : start + batch_size])  # (b, dim_z)
            y_b = None if y is None else place(y[start : start + batch_size])  # (b,)
            x = G(z_b, y_b).float()  # (b, 3, h, w)
            out.append(x.cpu() if to_host else x)
        return torch.cat(out)  # (B, 3, h, w)
    finally:
        G.train(was_training)
