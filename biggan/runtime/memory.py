"""Peak memory of the process or device, for the tick's status line and the benchmarks.

CUDA reports its allocator's peak. XLA reports a device peak on TPU; XLA:CPU has none. Everything else falls back to
the process's peak resident set size (``VmHWM`` on Linux, which ``/proc/self/clear_refs`` can reset; ``ru_maxrss``
elsewhere, which cannot).
"""

from __future__ import annotations

import contextlib
import resource
import sys
from pathlib import Path

import torch

__all__ = ["peak_memory_bytes", "reset_peak_memory"]

_PROC_STATUS = Path("/proc/self/status")


def _host_peak_bytes() -> int:
    if _PROC_STATUS.exists():  # Linux: VmHWM, resettable through clear_refs
        for line in _PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB elsewhere
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


def peak_memory_bytes(kind: str, device: torch.device) -> int:
    """Peak memory since the last :func:`reset_peak_memory`: CUDA allocations, a TPU's peak, else the peak RSS."""
    if kind == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if kind == "xla":
        import torch_xla.core.xla_model as xm

        try:  # TPU reports a device peak; XLA:CPU has none and falls back to the host RSS
            info = xm.get_memory_info(device)
        except RuntimeError:
            info = {}
        if "peak_bytes_used" in info:
            return int(info["peak_bytes_used"])
    return _host_peak_bytes()


def reset_peak_memory(kind: str, device: torch.device) -> None:
    """Start a new peak: CUDA statistics, or (Linux) the peak RSS set back to the current RSS."""
    if kind == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif _PROC_STATUS.exists():
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM (Linux >= 4.0)
