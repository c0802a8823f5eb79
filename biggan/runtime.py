"""The device seam: the only module that knows devices, processes, ``torch.distributed`` and ``torch_xla``.

Three kinds, one training path (the loop never branches on the kind):

* ``cpu``  - one process, or ``torchrun`` processes joined by gloo (used to test DDP here);
* ``cuda`` - one GPU, or DDP under ``torchrun`` (one node or many), NCCL; one process per GPU;
* ``xla``  - torch-xla 2.9 through PJRT: one device, or SPMD data parallelism over every local device (one process
  per host; the batch dimension of every input is sharded over a 1-D ``data`` mesh, parameters are replicated and
  XLA inserts the gradient all-reduce). ``torch_xla`` is imported lazily, so CPU/GPU installs never need it.

Per-process numbers: ``rank``/``world_size`` count processes (torchrun ranks, or hosts under SPMD), ``num_devices``
counts the devices the global batch is split over. The step must not read device values: losses stay tensors,
:meth:`Runtime.reduce_mean` is the one host sync and belongs in the tick.

Multi-host TPU pods (SPMD; written to the torch-xla 2.9 docs, not testable here): start the same command on every
host (``gcloud compute tpus tpu-vm ssh NAME --worker=all --command "PJRT_DEVICE=TPU python train.py ..."``). Each
host is one process (``rank`` = host index, ``world_size`` = hosts); the mesh spans every device of the pod; each host
reads its own data shard of ``local_batch_size`` images and :meth:`Runtime.shard_batch` assembles the global batch
from the hosts' parts. Host 0 logs and writes checkpoints (parameters are replicated, so host copies are local).

GAN + DDP rule: wrap G and D with :meth:`Runtime.wrap_model`; in the G step call the discriminator through
:meth:`Runtime.unwrap` (D's gradients are not wanted there, and DDP would wait for them); in the D step G runs under
``torch.no_grad()`` (wrapped or not: DDP prepares no gradient reduction without grad mode).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Literal, Optional

import torch
import torch.nn as nn

from biggan.errors import ConfigError

__all__ = ["RuntimeConfig", "Runtime", "CrossReplicaBatchNorm", "convert_cross_replica_bn"]

_PROC_STATUS = Path("/proc/self/status")


@dataclass
class RuntimeConfig:
    """Where and how the step runs (the ``runtime:`` section of a run config)."""

    kind: Literal["auto", "cpu", "cuda", "xla"] = "auto"  # auto: xla if PJRT_DEVICE is set, else cuda, else cpu
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: forward passes under bf16 autocast; weights and optimiser fp32
    sync_bn: bool = False  # cross-replica BatchNorm statistics over all processes (small per-device batches)
    spmd: bool = True  # xla only: data parallel over all local devices with SPMD (False: first device only)
    threads: int = 0  # CPU intra-op threads (torch.set_num_threads); 0 keeps torch's default

    def validate(self) -> None:
        """Reject values no runtime can use."""
        if self.threads < 0:
            raise ConfigError(f"runtime.threads must be >= 0 (0 = torch default), got {self.threads}")


# ---------------------------------------------------------------------------------------------------------------------
# Cross-replica BatchNorm (torch's SyncBatchNorm refuses CPU tensors, so gloo tests could not exercise it)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        import torch.distributed as dist

        if not (self.training or self.running_mean is None) or not dist.is_initialized():
            return super().forward(x)
        C = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        xf = x.float()  # statistics in fp32 even under bf16 autocast, as native batch_norm does
        count = xf.new_full((1,), x.numel() // C)
        local = torch.cat([xf.sum(dims), (xf * xf).sum(dims), count])  # (2C + 1,): Σx, Σx², n of this process
        stats = _AllReduceSum.apply(local)  # (2C + 1,) over all processes
        n = stats[2 * C]
        mean = stats[:C] / n  # (C,)
        var = (stats[C : 2 * C] / n - mean * mean).clamp_min(0.0)  # (C,) biased, as used for normalisation
        if self.training and self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), n.detach())
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
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


def convert_cross_replica_bn(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer by :class:`CrossReplicaBatchNorm`, reusing its parameters and buffers."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CrossReplicaBatchNorm):
        new = CrossReplicaBatchNorm(
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
        converted = convert_cross_replica_bn(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


# ---------------------------------------------------------------------------------------------------------------------
# The runtime


def _resolve_kind(kind: str) -> str:
    """``auto`` → xla when PJRT_DEVICE is set and torch_xla is installed, else cuda when available, else cpu."""
    if kind == "auto":
        if os.environ.get("PJRT_DEVICE") and importlib.util.find_spec("torch_xla") is not None:
            return "xla"
        return "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("runtime.kind=cuda but torch.cuda.is_available() is False; use runtime.kind=cpu or auto")
    if kind == "xla" and importlib.util.find_spec("torch_xla") is None:
        raise ConfigError(
            "runtime.kind=xla but torch_xla is not installed; use the venv from scripts/xla_env.sh "
            "(requirements/xla.txt) or runtime.kind=cpu"
        )
    return kind


class Runtime:
    """Device, processes and collectives for one run; build it with :meth:`Runtime.setup`."""

    def __init__(self, cfg: RuntimeConfig, kind: str, device: torch.device, rank: int, world_size: int,
                 local_rank: int, num_devices: int, mesh: Any = None) -> None:
        self.cfg = cfg
        self.kind = kind  # 'cpu' | 'cuda' | 'xla'
        self.device = device
        self.rank = rank  # process index (torchrun RANK, or host index under SPMD)
        self.world_size = world_size  # number of processes
        self.local_rank = local_rank
        self.num_devices = num_devices  # devices the global batch is split over
        self.is_main = rank == 0  # logging, checkpoints, FID writes happen here only
        self.seed_offset = rank  # add to the run seed: distinct z / data / hashing streams per process
        self._mesh = mesh  # xla SPMD: 1-D device mesh named 'data'

    # -- construction ---------------------------------------------------------------------------------------------

    @classmethod
    def setup(cls, cfg: RuntimeConfig) -> "Runtime":
        """Pick the device, join the process group (under torchrun) or set up SPMD (xla)."""
        kind = _resolve_kind(cfg.kind)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if kind == "xla":
            return cls._setup_xla(cfg)
        rank = int(os.environ.get("RANK", 0))
        world_size = int(os.environ.get("WORLD_SIZE", 1))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if kind == "cuda":
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
        else:
            device = torch.device("cpu")
        if world_size > 1:
            import torch.distributed as dist

            dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo", init_method="env://")
        return cls(cfg, kind, device, rank, world_size, local_rank, num_devices=world_size)

    @classmethod
    def _setup_xla(cls, cfg: RuntimeConfig) -> "Runtime":
        import numpy as np
        import torch_xla
        import torch_xla.runtime as xr

        mesh = None
        if cfg.spmd:
            import torch_xla.distributed.spmd as xs

            xr.use_spmd()  # must precede any XLA tensor: from here on the process sees one virtual device
            num_devices = xr.global_runtime_device_count()
            mesh = xs.Mesh(np.arange(num_devices), (num_devices,), ("data",))
            rank, world_size = xr.process_index(), xr.process_count()
        else:
            num_devices, rank, world_size = 1, 0, 1
        return cls(cfg, "xla", torch_xla.device(), rank, world_size, 0, num_devices=num_devices, mesh=mesh)

    # -- batch sizes and placement -------------------------------------------------------------------------------

    @property
    def num_data_shards(self) -> int:
        """Processes that each read a distinct part of the data (the data stream's world size; rank = ``rank``)."""
        return self.world_size

    def local_batch_size(self, per_device_batch: int) -> int:
        """Images this process loads per step: one device's batch times the devices it feeds."""
        return per_device_batch * (self.num_devices // self.world_size)

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """Move to the device; under several processes add cross-replica BN (if asked) and wrap in DDP.

        On one process and under XLA SPMD the model is returned as is (SPMD normalises over the global batch already).
        """
        model = model.to(self.device)
        if self.world_size == 1 or self.kind == "xla":
            return model
        if self.cfg.sync_bn:
            model = convert_cross_replica_bn(model)
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.local_rank] if self.kind == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The plain module inside a DDP wrapper (for EMA, checkpoints, and D inside the G step)."""
        from torch.nn.parallel import DistributedDataParallel

        return model.module if isinstance(model, DistributedDataParallel) else model

    def shard_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Move a host batch ``(B, ...)`` to the device; under SPMD shard dim 0 over the ``data`` mesh axis.

        Use it for every batch-dimension input (images, z, labels), so XLA keeps the whole step data parallel.
        Under multi-host SPMD ``x`` is this host's part of the global batch.
        """
        if self._mesh is None:
            return x.to(self.device, non_blocking=True)
        import torch_xla.core.xla_model as xm
        import torch_xla.distributed.spmd as xs

        spec = xs.ShardingSpec(self._mesh, ("data",) + (None,) * (x.dim() - 1), minibatch=self.world_size > 1)
        return xm.send_cpu_data_to_device([x], self.device, input_sharding=spec)[0]

    def autocast(self) -> ContextManager:
        """bf16 autocast for forward passes when ``precision: bf16``; a no-op context otherwise."""
        if self.cfg.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    # -- step -----------------------------------------------------------------------------------------------------

    def optimizer_step(self, opt: torch.optim.Optimizer) -> None:
        """Apply gradients (DDP has averaged them in backward; SPMD has them global by construction)."""
        opt.step()

    def mark_step(self) -> None:
        """End of one traced step on XLA (cuts and launches the graph); nothing elsewhere."""
        if self.kind == "xla":
            import torch_xla

            torch_xla.sync()

    # -- collectives (tick only) -----------------------------------------------------------------------------------

    def reduce_mean(self, tensors: dict[str, torch.Tensor]) -> dict[str, float]:
        """Mean of each tensor over its elements and over processes, as floats: the one host sync (tick only)."""
        if not tensors:
            return {}
        keys = list(tensors)
        stacked = torch.stack([tensors[k].detach().float().mean().to(self.device) for k in keys])  # (len(keys),)
        if self._distributed():
            import torch.distributed as dist

            dist.all_reduce(stacked)
            stacked = stacked / self.world_size
        return dict(zip(keys, stacked.cpu().tolist()))

    def reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over processes in place (FID feature sums); a no-op on one process and under SPMD."""
        if self._distributed():
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def gather_to_main(self, obj: Any) -> Optional[list[Any]]:
        """Every process's ``obj`` (picklable, small) as a list by rank on the main process, None on the others.

        All processes must call it (checkpoint time: each one's RNG states). One process, SPMD included: ``[obj]``.
        """
        if not self._distributed():
            return [obj]
        import torch.distributed as dist

        gathered: Optional[list[Any]] = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, gathered, dst=0)
        return gathered

    def barrier(self) -> None:
        """Wait for every process (e.g. rank 0 writes a file the others then read)."""
        if self._distributed():
            import torch.distributed as dist

            dist.barrier()
        elif self.kind == "xla" and self.world_size > 1:
            import torch_xla.core.xla_model as xm

            xm.rendezvous("biggan.barrier")

    def _distributed(self) -> bool:
        return self.world_size > 1 and self.kind != "xla"

    # -- host side -----------------------------------------------------------------------------------------------

    def to_host(self, obj: Any) -> Any:
        """Recursive copy of every tensor in ``obj`` to the CPU, so checkpoints load anywhere (and XLA can save)."""
        if isinstance(obj, torch.Tensor):
            return obj.detach().cpu()
        if isinstance(obj, dict):
            return {k: self.to_host(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.to_host(v) for v in obj)
        return obj

    def synchronize(self) -> None:
        """Wait until queued device work is done (timing only)."""
        if self.kind == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.kind == "xla":
            import torch_xla
            import torch_xla.core.xla_model as xm

            torch_xla.sync()
            xm.wait_device_ops()

    def peak_memory_bytes(self) -> int:
        """Peak memory since the last :meth:`reset_peak_memory`: CUDA allocations, else the process's peak RSS."""
        if self.kind == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        if self.kind == "xla":
            import torch_xla.core.xla_model as xm

            try:  # TPU reports a device peak; XLA:CPU has none and falls back to the host RSS
                info = xm.get_memory_info(self.device)
            except RuntimeError:
                info = {}
            if "peak_bytes_used" in info:
                return int(info["peak_bytes_used"])
        if _PROC_STATUS.exists():  # Linux: VmHWM, resettable through clear_refs
            for line in _PROC_STATUS.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB elsewhere
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale

    def reset_peak_memory(self) -> None:
        """Start a new peak: CUDA statistics, or (Linux) the peak RSS set back to the current RSS."""
        if self.kind == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif _PROC_STATUS.exists():
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM (Linux >= 4.0)

    def print0(self, *args: Any, **kwargs: Any) -> None:
        """print() on the main process only, flushed."""
        if self.is_main:
            print(*args, **kwargs, flush=True)

    def shutdown(self) -> None:
        """Leave the process group (call once at the end of a run, also after errors)."""
        if self._distributed():
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
