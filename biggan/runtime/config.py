"""Runtime settings (the ``runtime:`` section of a run config): which device kind, precision and parallel options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from biggan.config import Section, number
from biggan.errors import ConfigError

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
    tf32: bool = True  # cuda only: fp32 matmuls and convolutions in TF32 (SMYRF hashing stays exact fp32 regardless)
    channels_last: bool = False  # cpu/cuda: G, D and image batches in channels_last memory format
    compile: bool = False  # cpu/cuda: G and D forwards through torch.compile (checkpoints keep plain keys)
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"  # aot_eager: no codegen (tests, debugging)
    timeout_min: int = number(60, ge=1, le=1440)  # collectives timeout (min): covers rank 0 building FID statistics

    def check(self, where: str) -> None:
        self.check_kind(self.kind, where)

    def check_kind(self, kind: str, where: str = "runtime") -> None:
        """Options the device kind cannot honour (at load for an explicit kind, at setup for the one ``auto`` chose)."""
        if kind == "xla" and self.compile:
            raise ConfigError(f"{where}.compile=true cannot run on {where}.kind=xla: XLA already compiles the whole "
                              f"step lazily; set {where}.compile=false")
        if kind == "xla" and self.channels_last:
            raise ConfigError(f"{where}.channels_last=true has no meaning on {where}.kind=xla (XLA picks its own "
                              f"layouts); set {where}.channels_last=false")
