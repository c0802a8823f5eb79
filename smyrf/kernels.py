"""Block kernels: softmax attention inside clusters, a small registry. ``math`` is the exact oracle among them.

A block is laid out as (R, nc, c, e): R rows (rounds x batch rows of a chunk), the nc clusters in the place of SDPA's
heads axis, c tokens of the cluster, e features. Every kernel keeps this contract, which ``smyrf.fused`` relies on:

- ``forward(s_q, s_k, s_v, scale) -> (s_out (R, nc, cq, ev), s_lse (R, nc, cq))``: the softmax attention of each
  cluster and its per-query logsumexp, the logsumexp in fp32 (fp64 stays fp64), the output in fp32 or the input dtype.
- ``backward(s_dout, s_q, s_k, s_v, s_out, s_lse, scale) -> (d_q, d_k, d_v)``: one standard attention backward,
  pi = exp(S - s_lse) and Delta = rowsum(s_dout * s_out). Called with the *final* (out, L) of all rounds it returns
  this round's share of the multiset-union gradient (``smyrf.fused`` docstring).
- bf16 accuracy: scores, logsumexp and exp in fp32. ``math``, the CPU ``flash`` and ``flex`` on CPU upcast the block
  to fp32 (fp64 stays fp64); the CUDA kernels take bf16 operands and accumulate in fp32 inside. A kernel with
  ``lowp_out`` forms Delta from ``s_out`` in the input dtype: ``smyrf.fused`` then hands it Delta-carrying columns.
- ``widths(d, dv) -> (ed, ev)``: the q/k and v widths the kernel runs at; q, k and v get zero columns up to them,
  which change no logit and no output (flash kernels need ed == ev; memory-efficient SDPA needs multiples of 8).

Kernels: ``math`` (matmul + softmax, any device), ``flash`` (PyTorch's fused flash-attention op of the device: CPU,
or CUDA in bf16/fp16), ``efficient`` (CUDA memory-efficient SDPA: q/k width != v width, lse returned), ``flex``
(FlexAttention forward; its public API cannot run a backward with an external logsumexp, so its backward is the math
one). The private aten ops are reached through ``_aten`` so tests can put exact stand-ins in their place on CPU.

Shape legend: R block rows; nc clusters; cq, ck cluster sizes; e, ed, ev feature widths.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable

import torch
from torch import Tensor

__all__ = ["BlockKernel", "KERNELS", "get_kernel", "kernel_names"]

_aten = torch.ops.aten  # the private SDPA ops; tests replace it with stand-ins


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _exact_dtype(x: Tensor) -> Tensor:
    """bf16/fp16 -> fp32 (scores, logsumexp and exp in fp32); fp32 and fp64 unchanged."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


# -- math: the oracle --------------------------------------------------------------------------------------------------


def _math_forward(s_q: Tensor, s_k: Tensor, s_v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    s_q, s_k, s_v = _exact_dtype(s_q), _exact_dtype(s_k), _exact_dtype(s_v)
    scores = torch.matmul(s_q, s_k.transpose(-1, -2)).mul_(scale)  # (R, nc, cq, ck)
    lse = torch.logsumexp(scores, dim=-1)  # (R, nc, cq)
    probs = scores.sub_(lse.unsqueeze(-1)).exp_()  # (R, nc, cq, ck), in place: one score-sized buffer
    return torch.matmul(probs, s_v), lse  # (R, nc, cq, ev), (R, nc, cq)


def _math_backward(
    dout: Tensor, s_q: Tensor, s_k: Tensor, s_v: Tensor, out: Tensor, lse: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    dout, s_q, s_k, s_v, out = (_exact_dtype(x) for x in (dout, s_q, s_k, s_v, out))
    probs = torch.matmul(s_q, s_k.transpose(-1, -2)).mul_(scale)  # (R, nc, cq, ck)
    probs.sub_(lse.unsqueeze(-1).to(probs.dtype)).exp_()  # pi = exp(S - L), the final L
    d_v = torch.matmul(probs.transpose(-1, -2), dout)  # (R, nc, ck, ev)
    delta = (dout * out).sum(-1, keepdim=True)  # (R, nc, cq, 1)
    d_scores = torch.matmul(dout, s_v.transpose(-1, -2)).sub_(delta).mul_(probs)  # (R, nc, cq, ck)
    del probs
    d_q = torch.matmul(d_scores, s_k).mul_(scale)  # (R, nc, cq, ed)
    d_k = torch.matmul(d_scores.transpose(-1, -2), s_q).mul_(scale)  # (R, nc, ck, ed)
    return d_q, d_k, d_v


# -- flash on CPU (fp32 inside) ----------------------------------------------------------------------------------------


def _cpu_flash_forward(s_q: Tensor, s_k: Tensor, s_v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    s_q, s_k, s_v = _exact_dtype(s_q), _exact_dtype(s_k), _exact_dtype(s_v)
    return _aten._scaled_dot_product_flash_attention_for_cpu(s_q, s_k, s_v, 0.0, False, scale=scale)


def _cpu_flash_backward(
    dout: Tensor, s_q: Tensor, s_k: Tensor, s_v: Tensor, out: Tensor, lse: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    # The op forms Delta = rowsum(dout * out) and pi = exp(S - lse) itself: given the final (out, L) it returns this
    # round's share of the multiset-union gradient. fp32 operands keep its bf16 results as exact as the math kernel.
    dout, s_q, s_k, s_v, out = (_exact_dtype(x) for x in (dout, s_q, s_k, s_v, out))
    return _aten._scaled_dot_product_flash_attention_for_cpu_backward(
        dout, s_q, s_k, s_v, out, lse.to(out.dtype), 0.0, False, scale=scale
    )


# -- CUDA: memory-efficient and flash SDPA ops, bf16 operands, fp32 accumulation ---------------------------------------


def _unused_rng(x: Tensor) -> Tensor:
    """The philox seed/offset arguments of the SDPA backward ops: read only with dropout, which SMYRF never uses."""
    return torch.zeros((), dtype=torch.int64, device=x.device)


def _efficient_forward(s_q: Tensor, s_k: Tensor, s_v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    out, lse, _, _ = _aten._scaled_dot_product_efficient_attention(s_q, s_k, s_v, None, True, 0.0, False, scale=scale)
    return out, lse[..., : s_q.shape[-2]]  # (R, nc, cq, ev); lse comes padded to a multiple of 32 queries


def _efficient_backward(
    dout: Tensor, s_q: Tensor, s_k: Tensor, s_v: Tensor, out: Tensor, lse: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    # The op reads lse through its batch and head strides only, so an unpadded (R, nc, cq) fp32 tensor serves. It
    # reads `out` with an implicit row stride of heads * Kv (cutlass Params.o_strideM), i.e. in the (R, cq, nc, ev)
    # memory layout its forward returns; a gathered (R, nc, cq, ev) block is copied into that layout first.
    out = out.transpose(1, 2).contiguous().transpose(1, 2)  # (R, nc, cq, ev) view of (R, cq, nc, ev) memory
    rng = _unused_rng(s_q)
    d_q, d_k, d_v, _ = _aten._scaled_dot_product_efficient_attention_backward(
        dout, s_q, s_k, s_v, None, out, lse.contiguous(), rng, rng, 0.0, [True, True, True, False], False,
        scale=scale,
    )
    return d_q, d_k, d_v


def _cuda_flash_forward(s_q: Tensor, s_k: Tensor, s_v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    out, lse, *_ = _aten._scaled_dot_product_flash_attention(s_q, s_k, s_v, 0.0, False, False, scale=scale)
    return out, lse  # (R, nc, cq, ev), (R, nc, cq) fp32


def _cuda_flash_backward(
    dout: Tensor, s_q: Tensor, s_k: Tensor, s_v: Tensor, out: Tensor, lse: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    rng = _unused_rng(s_q)
    return _aten._scaled_dot_product_flash_attention_backward(
        dout, s_q, s_k, s_v, out, lse.contiguous(), None, None, s_q.shape[-2], s_k.shape[-2], 0.0, False,
        rng, rng, scale=scale,
    )


# -- FlexAttention: fused forward (compiled on CUDA); backward through the math kernel ---------------------------------

_FLEX_COMPILED: dict[str, Callable] = {}


def _flex_function(device: torch.device) -> Callable:
    """flex_attention, compiled on CUDA (eager it materialises the scores: the fused kernel comes from Inductor)."""
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention
    if "cuda" not in _FLEX_COMPILED:
        _FLEX_COMPILED["cuda"] = torch.compile(flex_attention, dynamic=False)
    return _FLEX_COMPILED["cuda"]


def _flex_forward(s_q: Tensor, s_k: Tensor, s_v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    from torch.nn.attention import flex_attention as flex_module

    if s_q.device.type == "cpu":
        s_q, s_k, s_v = _exact_dtype(s_q), _exact_dtype(s_k), _exact_dtype(s_v)
    flex = _flex_function(s_q.device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        if hasattr(flex_module, "AuxRequest"):  # torch >= 2.9: return_lse is deprecated
            out, aux = flex(s_q, s_k, s_v, scale=scale, return_aux=flex_module.AuxRequest(lse=True))
            return out, aux.lse
        return flex(s_q, s_k, s_v, scale=scale, return_lse=True)


# -- the registry ------------------------------------------------------------------------------------------------------

_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_FUSED_CUDA = (torch.float32, torch.bfloat16, torch.float16)
_HALF = (torch.bfloat16, torch.float16)


@dataclasses.dataclass(frozen=True)
class BlockKernel:
    """One way to attend inside clusters on one device type (module docstring for the contract)."""

    name: str
    device_type: str  # "cpu", "cuda", or "*" for any device
    dtypes: tuple[torch.dtype, ...]
    forward: Callable[..., tuple[Tensor, Tensor]]
    backward: Callable[..., tuple[Tensor, Tensor, Tensor]]
    widths: Callable[[int, int], tuple[int, int]]
    lowp_out: bool = False  # backward forms Delta from s_out in the input dtype (fused CUDA kernels)
    materialises_scores: bool = False  # (R, nc, cq, ck) score-sized buffers exist (forward or backward)
    op: str | None = None  # the aten op it needs, checked by ``available``

    def available(self, device: torch.device, dtype: torch.dtype) -> bool:
        if self.device_type not in ("*", device.type) or dtype not in self.dtypes:
            return False
        return self.op is None or hasattr(_aten, self.op)


def _same_width(d: int, dv: int) -> tuple[int, int]:
    return max(d, dv), max(d, dv)


KERNELS: dict[str, dict[str, BlockKernel]] = {
    "math": {"*": BlockKernel("math", "*", _FLOATS, _math_forward, _math_backward, lambda d, dv: (d, dv),
                              materialises_scores=True)},
    "flash": {
        "cpu": BlockKernel("flash", "cpu", _FLOATS, _cpu_flash_forward, _cpu_flash_backward, _same_width,
                           op="_scaled_dot_product_flash_attention_for_cpu_backward"),
        "cuda": BlockKernel("flash", "cuda", _HALF, _cuda_flash_forward, _cuda_flash_backward,
                            lambda d, dv: (_round_up(max(d, dv), 8),) * 2, lowp_out=True,
                            op="_scaled_dot_product_flash_attention_backward"),
    },
    "efficient": {
        "cuda": BlockKernel("efficient", "cuda", _FUSED_CUDA, _efficient_forward, _efficient_backward,
                            lambda d, dv: (_round_up(d, 8), _round_up(dv, 8)), lowp_out=True,
                            op="_scaled_dot_product_efficient_attention_backward"),
    },
    "flex": {
        "cpu": BlockKernel("flex", "cpu", _FLOATS, _flex_forward, _math_backward, lambda d, dv: (d, dv),
                           materialises_scores=True),
        "cuda": BlockKernel("flex", "cuda", _FUSED_CUDA, _flex_forward, _math_backward,
                            lambda d, dv: (_round_up(d, 16), _round_up(dv, 16)), materialises_scores=True),
    },
}


def kernel_names() -> tuple[str, ...]:
    return tuple(KERNELS)


def get_kernel(name: str, device: torch.device) -> BlockKernel | None:
    """The ``name`` kernel for ``device``'s type, or None when it has none there."""
    variants = KERNELS.get(name, {})
    return variants.get(device.type) or variants.get("*")
