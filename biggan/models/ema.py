"""Exponential moving average of G's weights (Karras et al. 2018; BigGAN's ``G_ema``).

    G_ema <- decay · G_ema + (1 - decay) · G    per call of :meth:`EMA.update`, with decay = 0 before ``start_step``

so until ``start_step`` G_ema simply tracks G (BigGAN starts averaging at 20k iterations).

Buffer policy (explicit, because it changes samples):
- ``copy`` (default, as stylegan2-ada): BN running statistics and SN vectors are copied from G. G_ema is used in eval
  mode, where SN uses the stored ``u`` and BN the stored statistics, so this gives G_ema the statistics of the network
  that produced them; averaging them would lag by ~1/(1-decay) steps on top.
- ``average`` (BigGAN-PyTorch lerps the whole state_dict): floating buffers are averaged like the weights; integer
  buffers (BN ``num_batches_tracked``) are copied.

SMYRF generators are not part of the average: G_ema is sampled in eval mode, which uses the fixed per-layer seeds.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """Holds ``model``, an eval-mode, no-grad copy of G that :meth:`update` moves towards G.

    Args:
        G: the generator to average (unwrapped, not DDP).
        decay: per-update decay in [0, 1) (BigGAN: 0.9999).
        start_step: updates with ``step < start_step`` copy G (decay 0).
        buffers: ``copy`` or ``average`` (see the module docstring).
    """

    def __init__(
        self, G: nn.Module, decay: float, start_step: int = 0, buffers: Literal["copy", "average"] = "copy"
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if buffers not in ("copy", "average"):
            raise ValueError(f"EMA buffers must be 'copy' or 'average', got {buffers!r}")
        self.decay, self.start_step, self.buffers = decay, start_step, buffers
        self.model = copy.deepcopy(G).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, G: nn.Module, step: int) -> None:
        """One EMA step after G's optimiser step number ``step`` (a Python int: no device sync)."""
        decay = self.decay if step >= self.start_step else 0.0
        ema_params = dict(self.model.named_parameters())
        for name, param in G.named_parameters():
            ema_params[name].lerp_(param.detach(), 1.0 - decay)
        ema_buffers = dict(self.model.named_buffers())
        for name, buf in G.named_buffers():
            target = ema_buffers[name]
            if self.buffers == "average" and buf.is_floating_point():
                target.lerp_(buf, 1.0 - decay)
            else:
                target.copy_(buf)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
