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
``torch.no_grad()`` (wrapped or not: DDP prepares no gradient reduction without grad mode). With gradient
accumulation every micro-batch but the last runs under :meth:`Runtime.sync` ``(model, last=False)`` (DDP's
``no_sync``): gradients add up locally and are all-reduced once, in the last micro-batch's backward.

CUDA settings (:func:`_configure_cuda`): ``runtime.tf32`` (TF32 matmuls and convolutions; SMYRF hashes with
multiply-adds, not a matmul, so its fp32 is exact either way), ``cudnn.benchmark`` (shapes are fixed for a run).
``runtime.channels_last`` and ``runtime.compile`` apply in :meth:`Runtime.wrap_model` (cpu and cuda; refused on xla).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import inspect
import os
from typing import Any, Callable, ContextManager, Optional

import torch
import torch.nn as nn

from biggan.errors import ConfigError
from biggan.runtime import memory
from biggan.runtime.batchnorm import convert_spmd_bn, convert_sync_bn, has_batch_statistics
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


def _configure_cuda(cfg: RuntimeConfig) -> None:
    """Process-wide CUDA maths settings: TF32 as ``runtime.tf32`` says, cuDNN autotuning on.

    TF32 rounds matmul and convolution operands to 10-bit mantissas with fp32 accumulation (Ampere and newer). torch
    already defaults to it for cuDNN convolutions; ``tf32: true`` adds matmuls (linears, dense attention, SN's power
    iteration), ``false`` turns both off. The SMYRF hash is exact either way (``smyrf.hashing._project`` uses no
    matmul off the CPU). Its effect on GAN quality is not measured here.
    ``cudnn.benchmark``: every step has the same shapes, so the per-shape autotuning is paid once (its algorithm choice
    may differ between runs: CUDA resumes are close, not bit-identical; CPU resumes stay bit-identical).
    The legacy ``allow_tf32`` flags, not the ``fp32_precision`` ones: on torch 2.9 and 2.14 reading a legacy flag
    after setting a new one raises (mixed APIs), and other code still reads them; 2.9 only warns of a deprecation.
    """
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    torch.backends.cudnn.allow_tf32 = cfg.tf32
    torch.backends.cudnn.benchmark = True


def _process_group_options(cfg: RuntimeConfig, kind: str, local_rank: int) -> dict[str, Any]:
    """``init_process_group`` arguments: NCCL bound to this process's GPU on cuda, gloo elsewhere.

    timeout: while rank 0 writes the demo dataset and the FID reference statistics (a pass of Inception over the whole
    dataset on first use, loop.py), the other ranks wait in a barrier; torch's default (10 min for NCCL) would kill
    them first. ``runtime.timeout_min`` (default 60) bounds every collective, so a rank that dies still ends the run.
    device_id: the NCCL communicator is made for this GPU at once, and barriers need not guess the device.
    """
    options: dict[str, Any] = {"backend": "nccl" if kind == "cuda" else "gloo", "init_method": "env://",
                               "timeout": datetime.timedelta(minutes=cfg.timeout_min)}
    if kind == "cuda":
        options["device_id"] = torch.device("cuda", local_rank)
    return options


_RECOMPILE_LIMIT = 64  # graphs per code object under runtime.compile (torch's default: 8)


def _allow_recompiles() -> None:
    """Raise Dynamo's per-code-object recompile limit (process-wide) for ``runtime.compile``.

    Why: SMYRF draws its projections on the host, a graph break inside G's loop over blocks, so Dynamo runs G's own
    forward eagerly and compiles each block separately; all blocks share one code object (``GBlock.forward``), which
    needs a graph per block, mode (train, no_grad, eval) and batch size. The shrunk demo (3 blocks) hit torch's limit
    of 8 in its first tick, after which that code ran eagerly without an error; with 64 it compiled 12 graphs of
    ``GBlock.forward`` in 3 steps and a tick (G-128 has 5 blocks: about 20 expected, not measured).
    """
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, _RECOMPILE_LIMIT)


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
        cfg.check_kind(kind)  # what ``auto`` chose may refuse an option (compile or channels_last on xla)
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
            _configure_cuda(cfg)
        else:
            device = torch.device("cpu")
        if world_size > 1:
            import torch.distributed as dist

            dist.init_process_group(**_process_group_options(cfg, kind, local_rank))
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
        """Move to the device (channels_last if asked); under several processes add cross-replica BN (if asked);
        compile (if asked); under several processes wrap in DDP.

        On one process and under XLA SPMD the model is not wrapped (:meth:`place_model`; SPMD normalises over the global
        batch already).
        ``runtime.compile`` compiles the module in place (``nn.Module.compile``): its ``state_dict`` keeps plain keys
        (no ``_orig_mod.``), :meth:`unwrap` gives the compiled module itself, so D inside the G step and G inside the
        D step run compiled too, and the EMA copy (made before wrapping) stays an eager module. Inside DDP this means
        the gradient all-reduce starts when the compiled backward has finished, not bucket by bucket (Dynamo's
        bucket-splitting applies only to a compiled DDP wrapper, which the unwrapped calls would bypass).
        """
        model = self.place_model(model)
        if self.cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)  # 4-D weights only; 1-D/2-D ones are unchanged
        distributed = self._distributed()
        if distributed and self.cfg.sync_bn:
            model = convert_sync_bn(model, self.kind)
        if self.cfg.compile:
            _allow_recompiles()
            # dynamic=False: the step's shapes are fixed, so each call site gets its own static graph (a handful:
            # train/no_grad/eval, B and 2B) rather than symbolic shapes through SMYRF's cluster arithmetic.
            model.compile(backend=self.cfg.compile_backend, dynamic=False)
        if not distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.local_rank] if self.kind == "cuda" else None
        # torch >= 2.14 names the per-forward buffer sync forward_sync_buffers (broadcast_buffers warns there); 2.9
        # knows only broadcast_buffers. Both still broadcast the buffers once when DDP is built.
        params = inspect.signature(DistributedDataParallel.__init__).parameters
        key = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
        return DistributedDataParallel(model, device_ids=device_ids, **{key: self._broadcast_buffers(model)})

    def _broadcast_buffers(self, model: nn.Module) -> bool:
        """Whether DDP must copy rank 0's buffers to every rank before each forward.

        Why not always: our buffers are spectral norm's (``u``, ``sv``: power iteration on the weight alone) and
        BatchNorm's running statistics. SN's are a function of the weights, which DDP keeps identical (same initial
        values, broadcast once when DDP is built, identical all-reduced updates), so every rank computes the same
        values; D has only those. BN statistics are the same on every rank only when they are synchronised
        (``sync_bn``: each rank updates them from the all-reduced batch moments); otherwise each rank's come from its
        own batch, and rank 0's are broadcast so that G and G_ema (whose buffers are copied from G) agree across ranks
        for grids and sharded FID. tests/test_ddp.py checks that the buffers stay identical without the broadcast.
        Saves DDP's coalesced broadcast of every buffer before each forward of a wrapped network (at the paper
        config G-128 holds 115 buffers, 63k values; D-128 36 buffers, 12k values); not timed here (no GPU).
        """
        return has_batch_statistics(model) and not self.cfg.sync_bn

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

    def sync(self, model: nn.Module, last: bool) -> ContextManager:
        """Context for one accumulation micro-batch's forward and backward of the network being trained: DDP's
        ``no_sync`` unless ``last`` (gradients add up locally; the last backward all-reduces their sum once, which
        is DDP's documented equivalent of reducing every micro-batch); a no-op context for an unwrapped model."""
        from torch.nn.parallel import DistributedDataParallel

        if last or not isinstance(model, DistributedDataParallel):
            return contextlib.nullcontext()
        return model.no_sync()

    def shard_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Move a host batch ``(B, ...)`` to the device; under SPMD shard dim 0 over the ``data`` mesh axis.

        Use it for every batch-dimension input (images, z, labels), so XLA keeps the whole step data parallel.
        Under multi-host SPMD ``x`` is this host's part of the global batch.
        """
        if self._mesh is None:
            x = x.to(self.device, non_blocking=True)
            if self.cfg.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)  # (B, C, h, w) images, stored channels innermost
            return x
        import torch_xla.core.xla_model as xm

        return xm.send_cpu_data_to_device([x], self.device, input_sharding=self.batch_sharding(x.dim()))[0]

    def batch_sharding(self, ndim: int) -> Any:
        """Under SPMD the ShardingSpec of a ``ndim``-D batch input: dim 0 over the ``data`` mesh axis (each host's part
        of the global batch under multi-host); None elsewhere."""
        if self._mesh is None:
            return None
        import torch_xla.distributed.spmd as xs

        return xs.ShardingSpec(self._mesh, ("data",) + (None,) * (ndim - 1), minibatch=self.world_size > 1)

    def device_loader(self, source: Callable[[], Any], on_device: Callable[..., Any], prefetch: int) -> Any:
        """Batches of the host stream ``source()`` on the device, read ``prefetch`` ahead (:mod:`biggan.runtime.loader`:
        a thread with pinned memory on CUDA, torch-xla's ParallelLoader with this sharding on XLA; 0 = in the step)."""
        from biggan.runtime.loader import DeviceLoader

        return DeviceLoader(self, source, on_device, prefetch)

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
        """Sum ``tensor`` over :attr:`metric_shards` processes in place (FID feature sums); a no-op for one shard.

        ``tensor`` must live on :attr:`metric_device`, also on one process: NCCL (cuda) reduces only GPU tensors, so a
        host tensor there would fail at the first evaluation of a multi-GPU run, hours in; refusing it everywhere
        lets a one-GPU (or CPU-test) run find the mistake.
        """
        if tensor.device != self.metric_device:
            raise ValueError(f"reduce_sum_ got a tensor on {tensor.device}, but this {self.kind} runtime reduces on "
                             f"{self.metric_device} (NCCL takes no host tensors); build it on runtime.metric_device")
        if self._distributed():
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def gather_to_main(self, obj: Any) -> Optional[list[Any]]:
        """Every process's ``obj`` (picklable, small) as a list by rank on the main process, None on the others.

        All processes must call it (checkpoint time: each one's RNG states): DDP ranks, or multi-host SPMD's hosts
        (over their gloo group). One process, single-host SPMD included: ``[obj]``.
        """
        if not self._in_process_group():
            return [obj]
        import torch.distributed as dist

        gathered: Optional[list[Any]] = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, gathered, dst=0)
        return gathered

    def barrier(self) -> None:
        """Wait for every process (e.g. rank 0 writes a file the others then read): DDP's group, or the SPMD hosts'."""
        if self._in_process_group():
            import torch.distributed as dist

            dist.barrier()

    def _distributed(self) -> bool:
        return self.world_size > 1 and self.kind != "xla"

    def _in_process_group(self) -> bool:
        """Whether this process is in a torch.distributed group: DDP's ranks, or multi-host SPMD's hosts (gloo)."""
        return self._distributed() or self._host_group

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
        if self._in_process_group():
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
