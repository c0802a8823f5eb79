"""The hot step: one D update and one G update as plain functions.

Both take every input explicitly and return **detached device tensors** (losses, mean logits, gradient norms). Nothing
here calls ``.item()``, prints a tensor or branches on a tensor value, so a step never waits for the device (and never
cuts the graph on XLA); the loop sums the returned tensors and reads them once per tick.

BigGAN details kept here:
- D sees fakes and reals in one forward (one SN power iteration for both; D has no BatchNorm), with G under
  ``no_grad``; the two are interleaved by batch block (:mod:`biggan.training.batch_layout`), which is ``cat(x_fake,
  x_real)`` on one device and keeps each SPMD device's rows on it.
- Fresh z for every D step and for the G step (the caller draws it).
- ``requires_grad`` is switched off for the network that is not being trained, so no gradient is computed for it.
- ``augment`` (DiffAugment, :mod:`biggan.training.augment`): D sees ``augment(x)`` for fakes and reals in the D step
  (each half drawn separately, same policy) and for the fakes in the G step, whose gradient flows through it.
- Gradient accumulation splits the batch into ``accumulate`` micro-batches, each loss scaled by ``1/accumulate``;
  each micro-batch takes a part of every batch block (``batch_layout.micro_batches``: ``chunk`` on one device), and
  each micro-batch of the trained network runs inside ``ctx.sync(net, last)`` (DDP: no all-reduce until the last).
- Under bf16 autocast the logits are cast to fp32 before the loss; SN power iteration and SMYRF hashing keep fp32
  inside the model layers.

Shape legend: B batch, C channels, h×w spatial size.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional

import torch
from torch import Tensor, nn

from biggan.training.batch_layout import micro_batches, pair_by_block, unpair_by_block
from biggan.training.losses import DLoss

__all__ = ["StepContext", "d_step", "g_step", "set_requires_grad", "grad_norm"]


def _always_sync(model: nn.Module, last: bool) -> ContextManager:
    return contextlib.nullcontext()


@dataclass(frozen=True)
class StepContext:
    """What both steps take from the run, besides networks, optimisers and batches.

    Args:
        optimizer_step: ``runtime.optimizer_step`` (applies the gradients on every device kind).
        autocast: ``runtime.autocast`` (bf16 autocast when configured, else a no-op context).
        accumulate: micro-batches per update; each micro-batch loss is scaled by ``1/accumulate``.
        sync: ``runtime.sync``: ``sync(net, last)`` is the context of one micro-batch's forward and backward of the
            trained network (DDP's ``no_sync`` unless ``last``); the default is a no-op context.
        batch_shards: ``runtime.batch_shards``, the blocks the batch axis is split into (SPMD devices; 1 elsewhere).
    """

    optimizer_step: Callable[[torch.optim.Optimizer], None]
    autocast: Callable[[], ContextManager]
    accumulate: int = 1
    sync: Callable[[nn.Module, bool], ContextManager] = _always_sync
    batch_shards: int = 1


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    """Toggle gradients for every parameter of ``module`` (the frozen network's weights then get no .grad)."""
    for param in module.parameters():
        param.requires_grad_(flag)


def grad_norm(module: nn.Module) -> Tensor:
    """Global L2 norm of all gradients in fp32, as a device tensor (no host sync); inf/NaN pass through.

    Why one call: ``get_total_norm`` (torch >= 2.6) takes every tensor's norm in fused foreach kernels, then the norm
    of those; a norm kernel per gradient was hundreds of launches per step on a GPU. Same value as the per-tensor
    ``stack(norms).norm()`` to fp32 rounding (tests/test_resilience.py).
    """
    grads = [p.grad.detach().float() for p in module.parameters() if p.grad is not None]  # .float(): no copy in fp32
    if not grads:
        return torch.zeros((), device=next(module.parameters()).device)
    # foreach=None: fused where torch has foreach kernels (CUDA), the per-tensor norms elsewhere (CPU, XLA)
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=None)


def d_step(
    G: nn.Module,
    D: nn.Module,
    opt_D: torch.optim.Optimizer,
    *,
    x_real: Tensor,
    z: Tensor,
    y: Optional[Tensor] = None,
    loss: Callable[[Tensor, Tensor], DLoss],
    ctx: StepContext,
    augment: Optional[Callable[[Tensor], Tensor]] = None,
) -> dict[str, Tensor]:
    """One D update on reals ``x_real`` (B, 3, h, w) and fakes G(z, y); returns detached D statistics.

    Args:
        G: the unwrapped generator (runs under ``no_grad``); D: the (possibly DDP-wrapped) discriminator.
        opt_D: D's optimiser.
        x_real: real images in [-1, 1], (B, 3, h, w), on the device.
        z: fresh latents (B, dim_z); y: labels (B,), or None when unconditional.
        loss: a D loss from :mod:`biggan.training.losses`.
        ctx: the run's optimiser step, autocast and accumulation.
        augment: differentiable augmentation applied to the fakes and to the reals before D (None: none).
    """
    set_requires_grad(G, False)
    set_requires_grad(D, True)
    opt_D.zero_grad(set_to_none=True)
    out = {key: torch.zeros((), device=x_real.device) for key in ("D_real", "D_fake", "D_out_real", "D_out_fake")}
    accumulate, shards = ctx.accumulate, ctx.batch_shards
    for index, (x_mb, z_mb, y_mb) in enumerate(zip(*(micro_batches(t, accumulate, shards) for t in (x_real, z, y)))):
        with torch.no_grad(), ctx.autocast():
            x_fake = G(z_mb, y_mb)
        x_fake = x_fake.to(x_mb.dtype)
        if augment is not None:
            x_fake, x_mb = augment(x_fake), augment(x_mb)  # same policy, each image its own draw
        y_both = None if y_mb is None else pair_by_block(y_mb, y_mb, shards)  # (2B,)
        with ctx.sync(D, index == accumulate - 1):
            with ctx.autocast():
                logits = D(pair_by_block(x_fake, x_mb, shards), y_both)  # (2B,)
            d_fake, d_real = unpair_by_block(logits.float(), shards)  # (B,), (B,)
            terms = loss(d_real, d_fake)
            (terms.total / accumulate).backward()
        out["D_real"] += terms.real.detach() / accumulate
        out["D_fake"] += terms.fake.detach() / accumulate
        out["D_out_real"] += d_real.detach().mean() / accumulate
        out["D_out_fake"] += d_fake.detach().mean() / accumulate
    out["D_grad_norm"] = grad_norm(D)
    ctx.optimizer_step(opt_D)
    # Free D's gradients now rather than at its next step: they would otherwise sit in memory through the G step
    # (D-128 at ch=96: 88M floats, 0.33 GiB). Same for G below, through the D steps.
    opt_D.zero_grad(set_to_none=True)
    return out


def g_step(
    G: nn.Module,
    D: nn.Module,
    opt_G: torch.optim.Optimizer,
    *,
    z: Tensor,
    y: Optional[Tensor] = None,
    loss: Callable[[Tensor], Tensor],
    ctx: StepContext,
    regularize: Optional[Callable[[], Tensor]] = None,
    augment: Optional[Callable[[Tensor], Tensor]] = None,
) -> dict[str, Tensor]:
    """One G update through a frozen D; returns detached G statistics.

    Args:
        G: the (possibly DDP-wrapped) generator being trained.
        D: the **unwrapped** discriminator (its parameters are frozen here, so a DDP wrapper would wait for gradients
            that never come).
        opt_G: G's optimiser.
        z: fresh latents (B, dim_z); y: labels (B,), or None when unconditional.
        loss: a G loss from :mod:`biggan.training.losses`.
        ctx: as in :func:`d_step`.
        regularize: returns an extra loss on G's weights (orthogonal regularisation), added once per update to the
            first micro-batch's loss, so its gradient flows through the same backward (and the same DDP reducer).
        augment: the D step's augmentation, applied to the fakes before D; G's gradient flows through it.
    """
    set_requires_grad(G, True)
    set_requires_grad(D, False)
    opt_G.zero_grad(set_to_none=True)
    out = {"G": torch.zeros((), device=z.device)}
    accumulate = ctx.accumulate
    for index, (z_mb, y_mb) in enumerate(zip(*(micro_batches(t, accumulate, ctx.batch_shards) for t in (z, y)))):
        with ctx.sync(G, index == accumulate - 1):  # forward and backward: DDP decides in the forward
            with ctx.autocast():
                x_fake = G(z_mb, y_mb)  # (B, 3, h, w)
                if augment is not None:
                    x_fake = augment(x_fake)
                d_fake = D(x_fake, y_mb)  # (B,)
            g_loss = loss(d_fake.float())
            total = g_loss / accumulate
            if regularize is not None and index == 0:
                total = total + regularize()
            total.backward()
        out["G"] += g_loss.detach() / accumulate
    out["G_grad_norm"] = grad_norm(G)
    ctx.optimizer_step(opt_G)
    opt_G.zero_grad(set_to_none=True)
    set_requires_grad(D, True)
    return out
