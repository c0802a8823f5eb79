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
The hosts join a gloo process group over torch-xla's ``xla://`` rendezvous at setup, for :meth:`Runtime.barrier` and
:meth:`Runtime.gather_to_main` (``xm.rendezvous`` is a no-op under SPMD, pytorch/xla#9479); a replicated input (SMYRF's
projections) is one global value, so every host must draw the same one (:attr:`Runtime.hosts_share_model_rng`).

GAN + DDP rule: wrap G and D with :meth:`Runtime.wrap_model`; in the G step call the discriminator through
:meth:`Runtime.unwrap` (D's gradients are not wanted there, and DDP would wait for them); in the D step G runs under
``torch.no_grad()`` (wrapped or not: DDP prepares no gradient reduction without grad mode).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Any, ContextManager, Optional

import torch
import torch.nn as nn

from biggan.errors import ConfigError
from biggan.runtime import memory
from biggan.runtime.batchnorm import convert_cross_replica_bn, convert_spmd_bn
from biggan.runtime.config import RuntimeConfig

__all__ = ["Runtime"]


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
        self._mesh = mesh  # xla SPMD: 1-D device mesh named 'data'
        self._host_group = False  # multi-host SPMD: the hosts' gloo group (barrier, gather_to_main) is joined

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
        runtime = cls(cfg, "xla", torch_xla.device(), rank, world_size, 0, num_devices=num_devices, mesh=mesh)
        if world_size > 1:
            runtime._join_hosts("xla://")
        return runtime

    def _join_hosts(self, init_method: str) -> None:
        """Join the hosts of a multi-host SPMD run in a gloo group (host-side collectives only: barrier, gathers).

        ``xla://`` is torch-xla's rendezvous: under SPMD its rank and size are the process index and count, and the
        store sits on host 0 (``MASTER_ADDR``, else the TPU's worker 0; ``MASTER_PORT``, default 12355).
        """
        import torch.distributed as dist

        if init_method == "xla://":
            import torch_xla.distributed.xla_backend  # noqa: F401  (registers the xla:// rendezvous handler)
        dist.init_process_group("gloo", init_method=init_method, rank=self.rank, world_size=self.world_size)
        self._host_group = True

    # -- batch sizes and placement -------------------------------------------------------------------------------

    @property
    def num_data_shards(self) -> int:
        """Processes that each read a distinct part of the data (the data stream's world size; rank = ``rank``)."""
        return self.world_size

    def local_batch_size(self, per_device_batch: int) -> int:
        """Images this process loads per step: one device's batch times the devices it feeds."""
        return per_device_batch * (self.num_devices // self.world_size)

    @property
    def batch_shards(self) -> int:
        """Contiguous blocks the batch axis of a device tensor is split into, one per device: ``num_devices`` under
        SPMD, 1 elsewhere (a DDP process holds its own whole tensor). The step's batch layouts keep them apart."""
        return self.num_devices if self._mesh is not None else 1

    @property
    def hosts_share_model_rng(self) -> bool:
        """True when every process must draw the same host randomness inside the model (SMYRF projections): under SPMD
        a replicated input is one global value that each host feeds from its own copy, so the copies must agree (one
        host, many devices: trivially). DDP processes each draw their own (decorrelated hashing)."""
        return self._mesh is not None

    def host_rows(self, device_rows: int) -> int:
        """Rows of a device batch of ``device_rows`` that this process draws on its host before :meth:`shard_batch`.

        All of them, except under multi-host SPMD, where device tensors are global and each host feeds its part (as for
        z): per-image randomness drawn on the host (augmentation parameters) then matches the batch it goes with.
        """
        if self._mesh is not None and self.world_size > 1:
            return device_rows // self.world_size
        return device_rows

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """Move to the device; under several processes add cross-replica BN (if asked) and wrap in DDP.

        On one process and under XLA SPMD the model is returned unwrapped (:meth:`place_model`).
        """
        model = self.place_model(model)
        if self.world_size == 1 or self.kind == "xla":
            return model
        if self.cfg.sync_bn:
            model = convert_cross_replica_bn(model)
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.local_rank] if self.kind == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def place_model(self, model: nn.Module) -> nn.Module:
        """Move to the device, never wrapped (G_ema too): under SPMD its BatchNorms become
        :class:`~biggan.runtime.batchnorm.SPMDBatchNorm` (same state dict), whose sums the partitioner splits over
        the batch; torch's lowers to XLA batch-norm ops that all-gather the whole batch on every device."""
        model = model.to(self.device)
        return convert_spmd_bn(model) if self._mesh is not None else model

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

    @property
    def metric_shards(self) -> int:
        """How many processes each compute a share of an evaluation (FID fakes) whose sums :meth:`reduce_sum_` adds:
        every DDP process; one under SPMD (the program is already global) and on one process."""
        return self.world_size if self._distributed() else 1

    @property
    def metric_device(self) -> torch.device:
        """Where an evaluation's float64 arithmetic runs (KID kernels, precision/recall distances): this process's GPU
        on cuda; the host elsewhere (XLA devices have no fast float64)."""
        return self.device if self.kind == "cuda" else torch.device("cpu")

    def reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over :attr:`metric_shards` processes in place (FID feature sums); a no-op for one shard."""
        if self._distributed():
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def gather_to_main(self, obj: Any) -> Optional[list[Any]]:
        """Every process's ``obj`` (picklable, small) as a list by rank on the main process, None on the others.

        All processes must call it (checkpoint time: each one's RNG states): DDP ranks, or multi-host SPMD's hosts
        (over their gloo group). One process, single-host SPMD included: ``[obj]``.
        """
        if not (self._distributed() or self._host_group):
            return [obj]
        import torch.distributed as dist

        gathered: Optional[list[Any]] = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, gathered, dst=0)
        return gathered

    def barrier(self) -> None:
        """Wait for every process (e.g. rank 0 writes a file the others then read): DDP's group, or the SPMD hosts'."""
        if self._distributed() or self._host_group:
            import torch.distributed as dist

            dist.barrier()

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
        """Peak memory since the last :meth:`reset_peak_memory` (see :mod:`biggan.runtime.memory`)."""
        return memory.peak_memory_bytes(self.kind, self.device)

    def reset_peak_memory(self) -> None:
        """Start a new peak (CUDA statistics, or the host's peak RSS)."""
        memory.reset_peak_memory(self.kind, self.device)

    def shutdown(self) -> None:
        """Leave the process group (call once at the end of a run, also after errors)."""
        if self._distributed() or self._host_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
