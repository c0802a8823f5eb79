"""Which block kernel (``smyrf.kernels``) runs: a documented rule where nothing can be measured, a measurement on CUDA.

``kernel="auto"``:

- CPU (rule, measured): PyTorch's fused CPU flash kernel for key clusters of at least 256, math below
  (``_FLASH_MIN_K_CLUSTER``).
- CUDA (measured once per process and shape): every fused candidate available there (``efficient``, ``flash``) and
  ``math`` run this call's SMYRF forward + backward on its own inputs (a fixed upstream gradient); a candidate that
  raises, or whose output or gradients differ from math's beyond the dtype's tolerance, is dropped with a warning;
  the fastest of the rest wins (median of 3 timed runs after one warm-up, CUDA events). This costs one host sync and
  a few passes at the first call of each shape, so it is skipped (rule below) while ``torch.compile`` traces or a CUDA
  graph is captured. ``tuned_kernels()`` lists the choices for reports (benchmarks/smyrf_cuda_check.py prints them).
  ``flex`` is not a candidate: its backward is the math one and its first call compiles for tens of seconds.
- CUDA without measurement: ``efficient`` (any width, no d == dv padding, returns the logsumexp), else math. A rule
  written without a GPU run: benchmarks/smyrf_cuda_check.py measures every kernel at the paper shapes.
- XLA and other devices: math (portable, static-shaped, no private op).

Trade-offs of measuring: two kernels within timing noise may be chosen differently by two runs or two DDP ranks; both
are exact up to fp32 accumulation order, so results agree to rounding but not bitwise. Pass an explicit ``kernel=``
where bitwise reproducibility across processes matters.
"""

from __future__ import annotations

import statistics
import warnings
from typing import Callable, Literal

import torch
from torch import Tensor

from smyrf.fused import smyrf_fused
from smyrf.kernels import get_kernel, kernel_names

__all__ = ["Kernel", "resolve_kernel", "choose_kernel", "tuned_kernels"]

Kernel = Literal["auto", "math", "flash", "efficient", "flex"]

# Below this key cluster size the fused CPU kernel loses to matmul + softmax: it pads q and k to dv (4x the q.k work at
# BigGAN's d = dv/4) and its 512-key blocks run part-empty. Measured fwd+bwd CPU time, Nq=16384, Nk=4096, H=4, cq=4ck,
# 1 thread: d=12/dv=48: ck=128 flash 0.14 s / math 0.17 s, ck=512 0.29 / 0.68; d=24/dv=96: ck=64 0.18 / 0.13,
# ck=128 0.23 / 0.19, ck=256 0.33 / 0.51, ck=512 0.50 / 0.86.
_FLASH_MIN_K_CLUSTER = 256

_CANDIDATES = ("efficient", "flash", "math")  # measured on CUDA, in this order
# Agreement with math: max |a - b| / max |b| per tensor (out, dq, dk, dv). bf16 tensor-core kernels round
# probabilities and score gradients to bf16: 0.34-0.74 % on their CPU stand-ins at logits 3-60, 4 rounds; a wrong
# layout or padding gives O(1). Half types: 3e-2; fp32: 1e-2 (math itself rounds to 10 bits under TF32).
_TOLERANCE = {torch.float32: 1e-2, torch.float64: 1e-9}
_MATH_TIMING_BYTES = 2 * 2**30
_TUNED: dict[tuple, str] = {}


def _available(name: str, device: torch.device, dtype: torch.dtype) -> bool:
    kernel = get_kernel(name, device)
    return kernel is not None and kernel.available(device, dtype)


def resolve_kernel(kernel: Kernel, device: torch.device, dtype: torch.dtype, k_cluster_size: int) -> str:
    """The kernel an explicit name or the unmeasured rule gives (module docstring); raises for an unavailable one."""
    if kernel == "auto":
        if device.type == "cpu":
            use_flash = _available("flash", device, dtype) and k_cluster_size >= _FLASH_MIN_K_CLUSTER
            return "flash" if use_flash else "math"
        if device.type == "cuda" and _available("efficient", device, dtype):
            return "efficient"
        return "math"
    if kernel not in kernel_names():
        raise ValueError(f"kernel must be 'auto' or one of {list(kernel_names())}, got {kernel!r}")
    if not _available(kernel, device, dtype):
        raise ValueError(f"kernel={kernel!r} is not available for device={device}, dtype={dtype}; use 'auto' or 'math'")
    return kernel


def _can_measure(device: torch.device) -> bool:
    if device.type != "cuda" or torch.compiler.is_compiling():
        return False
    return not torch.cuda.is_current_stream_capturing()


def _cuda_seconds(run: Callable[[], object], device: torch.device) -> float:
    """Median wall time of ``run`` on the device's current stream: 1 warm-up, 3 timed runs, one host sync."""
    run()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(3)]
    for start, end in events:
        start.record()
        run()
        end.record()
    torch.cuda.synchronize(device)
    return statistics.median(start.elapsed_time(end) / 1e3 for start, end in events)


def _seconds(name: str, args: tuple, device: torch.device) -> float:
    """Time of the ``name`` kernel's SMYRF fwd+bwd on ``args`` (tests put a stand-in here)."""
    return _cuda_seconds(lambda: _fwd_bwd(name, *args), device)


def _fwd_bwd(name: str, q: Tensor, k: Tensor, v: Tensor, perm_q: Tensor, perm_k: Tensor, nc: int, scale: float,
             dout: Tensor) -> list[Tensor]:
    with torch.enable_grad():
        leaves = [x.detach().requires_grad_() for x in (q, k, v)]
        out = smyrf_fused(*leaves, perm_q, perm_k, nc, scale, name)  # (B, Nq, dv)
        return [out.detach(), *torch.autograd.grad(out, leaves, dout)]


def _max_rel_diff(got: list[Tensor], want: list[Tensor]) -> float:
    return max(float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30))
               for a, b in zip(got, want))


def _measure(q: Tensor, k: Tensor, v: Tensor, perm_q: Tensor, perm_k: Tensor, nc: int, scale: float) -> str:
    """The fastest candidate that runs and agrees with math on this call's inputs (module docstring).

    Agreement is checked on the first two batch rows (math's scores of a whole G256@256 batch need tens of GB); math
    is timed only while one round's fp32 scores stay under ``_MATH_TIMING_BYTES``, beyond which it cannot win.
    """
    gen = torch.Generator(device=q.device).manual_seed(0)
    dout = torch.randn(*q.shape[:-1], v.shape[-1], generator=gen, device=q.device, dtype=q.dtype)  # (B, Nq, dv)
    full = (q, k, v, perm_q, perm_k, nc, scale, dout)
    rows = (q[:2], k[:2], v[:2], perm_q[:, :2], perm_k[:, :2], nc, scale, dout[:2])  # (2, N, .), (H, 2, N)
    want = _fwd_bwd("math", *rows)
    tolerance = _TOLERANCE.get(q.dtype, 3e-2)
    math_bytes = 3 * 4 * q.shape[0] * q.shape[1] * (k.shape[1] // nc)
    seconds = {}
    for name in _CANDIDATES:
        if not _available(name, q.device, q.dtype) or (name == "math" and math_bytes > _MATH_TIMING_BYTES):
            continue
        try:
            diff = 0.0 if name == "math" else _max_rel_diff(_fwd_bwd(name, *rows), want)
            if diff > tolerance:
                warnings.warn(f"smyrf: kernel {name!r} differs from math by {diff:.1e} here; not using it")
                continue
            seconds[name] = _seconds(name, full, q.device)
        except RuntimeError as err:  # an op that refuses these shapes on this GPU or build
            warnings.warn(f"smyrf: kernel {name!r} failed here ({str(err).splitlines()[0][:200]}); not using it")
    return min(seconds, key=seconds.get) if seconds else "math"


def choose_kernel(kernel: Kernel, q: Tensor, k: Tensor, v: Tensor, perm_q: Tensor, perm_k: Tensor, nc: int,
                  scale: float) -> str:
    """The kernel this call runs: an explicit one (validated), the CUDA measurement, or the rule."""
    if kernel != "auto" or not _can_measure(q.device):
        return resolve_kernel(kernel, q.device, q.dtype, k.shape[-2] // nc)
    key = (str(q.device), q.dtype, tuple(q.shape), tuple(k.shape), v.shape[-1], perm_q.shape[0], nc)
    if key not in _TUNED:
        _TUNED[key] = _measure(q, k, v, perm_q, perm_k, nc, scale)
    return _TUNED[key]


def tuned_kernels() -> dict[str, str]:
    """What the CUDA measurement chose so far, as ``{"device dtype B×Nq×d B×Nk×d dv H nc": kernel}``."""
    return {" ".join(map(str, key)): name for key, name in _TUNED.items()}
