"""Exact softmax attention: the oracle SMYRF is tested and benchmarked against.

Shape legend: q (..., Nq, d), k (..., Nk, d), v (..., Nk, dv) -> (..., Nq, dv).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["dense_attention"]


def dense_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """softmax(scale * q k^T) v, written out with matmul + softmax so it is exact in any dtype (float64 included).

    ``scale=None`` means 1/sqrt(d), as in ``torch.nn.functional.scaled_dot_product_attention``; SAGAN/BigGAN pass 1.0.
    It materialises the (..., Nq, Nk) score matrix on purpose: it is the readable reference, not a fast path.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (..., Nq, Nk)
    return torch.matmul(torch.softmax(scores, dim=-1), v)  # (..., Nq, dv)
