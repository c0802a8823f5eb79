"""Exponential moving average of G's weights (Karras et al. 2018; BigGAN's ``G_ema``).

    G_ema <- decay · G_ema + (1 - decay) · G    per call of :meth:`EMA.update`, with decay = 0 before ``start_step``

so until ``start_step`` G_ema simply tracks G (BigGAN starts averaging at 20k iterations).

Buffer policy (explicit, because it changes samples):
- ``copy`` (default, as stylegan2-ada): BN running statistics and SN vectors are copied from G. G_ema is used in eval
  mode, where SN uses the stored ``u`` and BN the stored statistics, so this gives G_ema the statistics of the network
  that produced them; averaging them would lag by ~1/(1-decay) steps on top.
- ``average`` (BigGAN-PyTorch lerps the whole state_dict): floating buffers are averaged like the weights; integer
  buffers (BN ``num_batches_tracked``) are copied.
- ``standing`` (BigGAN's "standing statistics"): as ``copy`` between uses, and before G_ema is used (grids, FID,
  checkpoints) :meth:`EMA.standing_statistics` re-estimates every BN layer's running statistics from G_ema's *own*
  activations. Why: G's statistics do not fit the averaged weights. Measured on the CPU demo (32², decay 0.99): at step
  800 G_ema's fid500_d64 is 1.02 with G's statistics and 0.52 with its own, and the gap grows during training
  (0.77 -> 0.55 at step 400).

SMYRF generators are not part of the average: G_ema is sampled in eval mode, which uses the fixed per-layer seeds.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Literal, Optional

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """Holds ``model``, an eval-mode, no-grad copy of G that :meth:`update` moves towards G.

    Args:
        G: the generator to average (unwrapped, not DDP).
        decay: per-update decay in [0, 1) (BigGAN: 0.9999).
        start_step: updates with ``step < start_step`` copy G (decay 0).
        buffers: ``copy``, ``average`` or ``standing`` (see the module docstring).
    """

    def __init__(self, G: nn.Module, decay: float, start_step: int = 0,
                 buffers: Literal["copy", "average", "standing"] = "copy") -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if buffers not in ("copy", "average", "standing"):
            raise ValueError(f"EMA buffers must be 'copy', 'average' or 'standing', got {buffers!r}")
        self.decay, self.start_step, self.buffers = decay, start_step, buffers
        self.model = copy.deepcopy(G).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, G: nn.Module, step: int) -> None:
        """One EMA step after G's optimiser step number ``step`` (a Python int: no device sync).

        Why foreach: G has hundreds of tensors (weights, SN vectors, BN statistics); one ``lerp_``/``copy_`` kernel each
        is hundreds of launches per step on a GPU, while ``torch._foreach_*`` fuses them into a few (grouped by device
        and dtype). Same ``lerp`` arithmetic, so G_ema is bit-identical to the per-tensor loop (the oracle in
        tests/test_models.py); on CPU foreach runs that loop itself.
        """
        weight = 1.0 - (self.decay if step >= self.start_step else 0.0)
        ema_params = dict(self.model.named_parameters())
        names = [name for name, _ in G.named_parameters()]
        _lerp_all([ema_params[n] for n in names], [p.detach() for _, p in G.named_parameters()], weight)
        ema_buffers = dict(self.model.named_buffers())
        averaged, copied = ([], []), ([], [])  # (targets, sources) each
        for name, buf in G.named_buffers():
            pair = averaged if self.buffers == "average" and buf.is_floating_point() else copied
            pair[0].append(ema_buffers[name])
            pair[1].append(buf)
        _lerp_all(*averaged, weight)
        if copied[0]:
            torch._foreach_copy_(*copied)

    @torch.no_grad()
    def standing_statistics(self, latents: Iterable[tuple[torch.Tensor, Optional[torch.Tensor]]]) -> None:
        """Replace every BN layer's running statistics by their average over G_ema's activations on ``latents``,
        batches of (z, y) (y None for an unconditional G).

        Only the BN layers run in train mode (SMYRF keeps its fixed eval projections, so no generator is drawn from);
        batch ``i`` enters with momentum 1/(i+1), which makes the running values the plain mean over the batches
        without reading any device value (no host sync on XLA). G_ema is left in eval mode.
        """
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.train()
        for i, (z, y) in enumerate(latents):
            for m in norms:
                m.momentum = 1.0 / (i + 1)
            self.model(z, y)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
            m.eval()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)


def _lerp_all(targets: list[torch.Tensor], sources: list[torch.Tensor], weight: float) -> None:
    """``t.lerp_(s, weight)`` for every pair, in fused foreach kernels (foreach refuses empty lists)."""
    if targets:
        torch._foreach_lerp_(targets, sources, weight)
