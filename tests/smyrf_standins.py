"""Exact CPU stand-ins for the CUDA SDPA ops SMYRF's fused kernels call, so their glue runs in the CPU test suite.

Each stand-in keeps the real op's signature, its layout (B, heads, tokens, width), its argument constraints (asserted:
widths multiple of 8 in half precision, d == dv for flash, an fp32 logsumexp whose rows the op reads by stride) and
the memory-efficient backward's implicit layout of ``out`` (its cutlass kernel reads it with row stride heads * Kv,
the (B, tokens, heads, Kv) layout its forward returns: asserted), its numerics as far as they matter here: fp32
accumulation, the probabilities and score gradients rounded to the input
dtype before their second matmul (as the tensor-core kernels do), the output rounded to the input dtype, Delta formed
from the ``out`` argument *in its dtype*, and the memory-efficient forward's logsumexp padded to a multiple of 32
queries with NaN, so a caller reading the padding fails. fp64 runs at fp64 throughout (for the exactness tests).

``install(monkeypatch)`` routes ``smyrf.kernels._aten`` through them (real ops for everything else) and registers the
CUDA kernels for CPU tensors: "efficient" as itself and the CUDA "flash" as "cuda_flash".
"""

from __future__ import annotations

import dataclasses
import math

import torch

import smyrf.kernels

STANDIN_KERNELS = ("efficient", "cuda_flash")
_HALF = (torch.bfloat16, torch.float16)


def _acc(x: torch.Tensor) -> torch.Tensor:
    return x.double() if x.dtype == torch.float64 else x.float()


def _low(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round to the input dtype for a tensor-core matmul, back in the accumulation dtype."""
    return _acc(x.to(dtype)) if dtype in _HALF else x


def _token_major(x: torch.Tensor) -> torch.Tensor:
    """(B, h, M, K) with the (B, M, h, K) memory layout the CUDA ops return."""
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def _forward(q, k, v, scale):
    s = _acc(q) @ _acc(k).transpose(-1, -2) * scale  # (B, h, M, N)
    lse = torch.logsumexp(s, dim=-1)  # (B, h, M)
    p = torch.exp(s - lse.unsqueeze(-1))
    return _token_major((_low(p, q.dtype) @ _acc(v)).to(q.dtype)), lse


def _backward(dout, q, k, v, out, lse, scale):
    assert lse.dtype in (torch.float32, torch.float64) and lse.stride(-1) == 1, (lse.dtype, lse.stride())
    assert lse.shape[:2] == q.shape[:2] and lse.shape[-1] >= q.shape[2], (lse.shape, q.shape)
    dtype, m = q.dtype, q.shape[2]
    s = _acc(q) @ _acc(k).transpose(-1, -2) * scale  # (B, h, M, N)
    p = torch.exp(s - _acc(lse[..., :m]).unsqueeze(-1))
    delta = (_acc(dout) * _acc(out)).sum(-1, keepdim=True)  # from `out` as given, in its dtype
    d_v = _low(p, dtype).transpose(-1, -2) @ _acc(dout)
    d_s = p * (_acc(dout) @ _acc(v).transpose(-1, -2) - delta)
    d_q = _low(d_s, dtype) @ _acc(k) * scale
    d_k = _low(d_s, dtype).transpose(-1, -2) @ _acc(q) * scale
    return _token_major(d_q.to(dtype)), _token_major(d_k.to(dtype)), _token_major(d_v.to(dtype))


def _check_widths(q, k, v, same: bool) -> None:
    assert q.dim() == k.dim() == v.dim() == 4 and q.shape[-1] == k.shape[-1], (q.shape, k.shape, v.shape)
    if q.dtype in _HALF:
        assert q.shape[-1] % 8 == 0 and v.shape[-1] % 8 == 0, f"widths {q.shape[-1]}, {v.shape[-1]} not 8-aligned"
    if same:
        assert q.shape[-1] == v.shape[-1], f"flash needs d == dv, got {q.shape[-1]} and {v.shape[-1]}"


def efficient_forward(q, k, v, attn_bias, compute_log_sumexp, dropout_p=0.0, is_causal=False, *, scale=None):
    assert attn_bias is None and compute_log_sumexp and dropout_p == 0.0 and not is_causal
    _check_widths(q, k, v, same=False)
    out, lse = _forward(q, k, v, scale)
    padded = torch.full((*lse.shape[:2], math.ceil(lse.shape[-1] / 32) * 32), float("nan"), dtype=lse.dtype)
    padded[..., : lse.shape[-1]] = lse
    rng = torch.zeros((), dtype=torch.int64)
    return out, padded, rng, rng


def efficient_backward(grad_out, query, key, value, attn_bias, out, logsumexp, philox_seed, philox_offset, dropout_p,
                       grad_input_mask, is_causal=False, *, scale=None):
    assert attn_bias is None and dropout_p == 0.0 and not is_causal and list(grad_input_mask) == [True] * 3 + [False]
    _check_widths(query, key, value, same=False)
    assert out.dtype == query.dtype == grad_out.dtype and out.shape[-1] == value.shape[-1]
    assert out.transpose(1, 2).is_contiguous(), f"out must have the forward's (B, M, h, Kv) layout: {out.stride()}"
    return (*_backward(grad_out, query, key, value, out, logsumexp, scale), None)


def flash_forward(query, key, value, dropout_p=0.0, is_causal=False, return_debug_mask=False, *, scale=None):
    assert dropout_p == 0.0 and not is_causal and not return_debug_mask
    assert query.dtype in _HALF + (torch.float64,), f"flash runs in half precision, got {query.dtype}"
    _check_widths(query, key, value, same=True)
    out, lse = _forward(query, key, value, scale)
    rng = torch.zeros(2, dtype=torch.int64)
    return out, lse, None, None, query.shape[2], key.shape[2], rng, torch.zeros((), dtype=torch.int64), None


def flash_backward(grad_out, query, key, value, out, logsumexp, cum_seq_q, cum_seq_k, max_q, max_k, dropout_p,
                   is_causal, philox_seed, philox_offset, *, scale=None):
    assert cum_seq_q is None and cum_seq_k is None and dropout_p == 0.0 and not is_causal
    assert (max_q, max_k) == (query.shape[2], key.shape[2])
    _check_widths(query, key, value, same=True)
    assert out.dtype == query.dtype == grad_out.dtype
    return _backward(grad_out, query, key, value, out, logsumexp, scale)


class _Ops:
    """``torch.ops.aten`` with the CUDA SDPA ops replaced by the stand-ins."""

    _scaled_dot_product_efficient_attention = staticmethod(efficient_forward)
    _scaled_dot_product_efficient_attention_backward = staticmethod(efficient_backward)
    _scaled_dot_product_flash_attention = staticmethod(flash_forward)
    _scaled_dot_product_flash_attention_backward = staticmethod(flash_backward)

    def __getattr__(self, name):
        return getattr(torch.ops.aten, name)


def install(monkeypatch) -> None:
    """Run the CUDA kernels' code on CPU tensors through the stand-ins (fp64 allowed, for the exactness tests)."""
    monkeypatch.setattr(smyrf.kernels, "_aten", _Ops())
    floats = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
    efficient = dataclasses.replace(smyrf.kernels.KERNELS["efficient"]["cuda"], device_type="cpu", dtypes=floats)
    flash = dataclasses.replace(smyrf.kernels.KERNELS["flash"]["cuda"], name="cuda_flash", device_type="cpu",
                                dtypes=_HALF + (torch.float64,))
    monkeypatch.setitem(smyrf.kernels.KERNELS, "efficient", {**smyrf.kernels.KERNELS["efficient"], "cpu": efficient})
    monkeypatch.setitem(smyrf.kernels.KERNELS, "cuda_flash", {"cpu": flash})
