"""Cross-replica BatchNorm: torch's ``SyncBatchNorm`` on CUDA, ours for processes joined by gloo on the CPU, and
BatchNorm written as plain sums for XLA SPMD.

torch's ``SyncBatchNorm`` refuses CPU tensors, so the gloo tests could not exercise it; ours all-reduces the
per-channel (Σx, Σx², n) with an autograd-aware sum, so that the backward pass carries the gradient through the global
mean and variance exactly as one big batch would. On CUDA torch's fused kernels do the same without our fp32 copies
(:func:`convert_sync_bn` picks by device kind). Both keep the parameter and buffer names, so state dicts are unchanged.

:class:`SPMDBatchNorm` is the same arithmetic with no collective of its own: under SPMD with the batch sharded, the
partitioner turns the sums over the batch into an all-reduce of the (2C + 1,) statistics. torch's BatchNorm lowers to
XLA's batch-norm ops instead, which the partitioner does not split over the batch: measured on XLA:CPU
(tests/xla/checks.py ``step_spmd``, BigGAN-32 ch 8 on 2 devices) every one of G's 7 BatchNorms all-gathered its whole
input (f32[4,32,32,32], ...; 14 all-gathers in the D step, 26 in the G step, 7 in FID sampling, eval mode included),
i.e. every device normalised the whole batch. Eval mode is written out too (running statistics, elementwise).

Shape legend: B batch; C channels.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

__all__ = ["CrossReplicaBatchNorm", "SPMDBatchNorm", "convert_cross_replica_bn", "convert_spmd_bn", "convert_sync_bn",
           "has_batch_statistics"]


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose backward is again a sum over processes (each rank's loss depends on every input)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(grad)


class CrossReplicaBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover the global batch of all processes.

    Each process all-reduces its per-channel (Σx, Σx², count) with an autograd-aware all-reduce, so the backward pass
    carries the gradient through the global mean and variance exactly as one big batch would. Eval mode uses the
    running statistics (identical on every rank, since they are updated from global statistics).
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected a (B, C, ...) input, got shape {tuple(x.shape)}")

    def _sum_over_replicas(self, local: torch.Tensor) -> Optional[torch.Tensor]:
        """(2C + 1,) sums of this process -> those over all processes; None: no process group (plain BatchNorm)."""
        import torch.distributed as dist

        return _AllReduceSum.apply(local) if dist.is_initialized() else None

    def _eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training or self.running_mean is None):
            return self._eval_forward(x)
        C = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        xf = x.float()  # statistics in fp32 even under bf16 autocast, as native batch_norm does
        count = xf.new_full((1,), x.numel() // C)
        local = torch.cat([xf.sum(dims), (xf * xf).sum(dims), count])  # (2C + 1,): Σx, Σx², n of this process
        stats = self._sum_over_replicas(local)  # (2C + 1,) over all processes
        if stats is None:
            return super().forward(x)
        n = stats[2 * C]
        mean = stats[:C] / n  # (C,)
        var = (stats[C : 2 * C] / n - mean * mean).clamp_min(0.0)  # (C,) biased, as used for normalisation
        if self.training and self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), n.detach())
        return self._normalize(x, mean, var)

    def _normalize(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """(x - mean) / sqrt(var + eps), then the affine part, in fp32; mean, var (C,)."""
        C = x.shape[1]
        xf = x.float()
        scale = torch.rsqrt(var.float() + self.eps)
        shift = -mean.float() * scale
        if self.affine:
            scale = scale * self.weight
            shift = shift * self.weight + self.bias
        shape = (1, C) + (1,) * (x.dim() - 2)
        return (xf * scale.view(shape) + shift.view(shape)).to(x.dtype)  # (B, C, ...)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * n / (n - 1).clamp_min(1.0)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)


class SPMDBatchNorm(CrossReplicaBatchNorm):
    """BatchNorm as plain sums and elementwise ops, for XLA SPMD (module docstring): statistics over the tensor's
    whole (global) batch, the partitioner adds the all-reduce; eval mode from the running statistics."""

    def _sum_over_replicas(self, local: torch.Tensor) -> torch.Tensor:
        return local  # an SPMD tensor is the global batch already

    def _eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalize(x, self.running_mean, self.running_var)


def convert_cross_replica_bn(module: nn.Module, kind: type = CrossReplicaBatchNorm) -> nn.Module:
    """Replace every BatchNorm layer by ``kind`` (:class:`CrossReplicaBatchNorm`), reusing its parameters and buffers
    (state-dict keys unchanged)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, kind):
        new = kind(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = convert_cross_replica_bn(child, kind)
        if converted is not child:
            setattr(module, name, converted)
    return module


def convert_sync_bn(module: nn.Module, kind: str) -> nn.Module:
    """Every BatchNorm layer of ``module`` made cross-replica: ``torch.nn.SyncBatchNorm`` on ``cuda`` (NCCL, fused
    kernels), :class:`CrossReplicaBatchNorm` elsewhere (gloo on the CPU). Parameters and buffers are reused.

    Our layers convert as they are: conditional BN holds a plain ``nn.BatchNorm2d(affine=False)`` (its per-sample
    gain and bias are separate modules) and G's output BN is a plain ``BatchNorm2d``; nothing calls ``F.batch_norm``.
    """
    if kind == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return convert_cross_replica_bn(module)


def has_batch_statistics(module: nn.Module) -> bool:
    """Whether ``module`` has BatchNorm running statistics (buffers that depend on each process's own batch)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in module.modules())


def convert_spmd_bn(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer by :class:`SPMDBatchNorm` (in place below the root), reusing its parameters."""
    return convert_cross_replica_bn(module, SPMDBatchNorm)
