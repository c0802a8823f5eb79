"""Runtime settings (the ``runtime:`` section of a run config): which device kind, precision and parallel options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from biggan.config import Section, number

__all__ = ["RuntimeConfig"]


@dataclass
class RuntimeConfig(Section):
    """Where and how the step runs."""

    where = "runtime"

    kind: Literal["auto", "cpu", "cuda", "xla"] = "auto"  # auto: xla if PJRT_DEVICE is set, else cuda, else cpu
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: forward passes under bf16 autocast; weights and optimiser fp32
    sync_bn: bool = False  # cross-replica BatchNorm statistics over all processes (small per-device batches)
    spmd: bool = True  # xla only: data parallel over all local devices with SPMD (False: first device only)
    threads: int = number(0, ge=0)  # CPU intra-op threads (torch.set_num_threads); 0 keeps torch's default
