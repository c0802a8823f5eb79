"""``SmyrfAttention``: the nn.Module face of :func:`smyrf.smyrf_attention`.

It has no parameters and no buffers, so a dense-attention checkpoint loads unchanged, and it keeps no state between
calls (no per-call attributes, safe under DataParallel replicas).

Shape legend: q (..., Nq, d), k (..., Nk, d), v (..., Nk, dv) -> (..., Nq, dv).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from smyrf.functional import Hashing, smyrf_attention
from smyrf.kernel_choice import Kernel
from smyrf.hashing import check_cluster_sizes
from smyrf.summary import Summary

__all__ = ["SmyrfAttention"]


class SmyrfAttention(nn.Module):
    """SMYRF attention with fixed H, cq, ck.

    Determinism: pass ``seed`` to draw the same projections on every call (e.g. evaluation and FID), or pass a
    ``generator`` to ``forward`` to draw from a stream you own (e.g. training, where the generator state is
    checkpointed by the caller). With neither, each call draws fresh projections from OS entropy. The global RNG is
    never used.

    Args:
        n_hashes: H, hash rounds.
        q_cluster_size, k_cluster_size: cq and ck (Nq/cq must equal Nk/ck at call time).
        seed: fixed projection seed, or None.
        hashing, impl, kernel, summary: as in :func:`smyrf.smyrf_attention`.
    """

    def __init__(
        self,
        n_hashes: int,
        q_cluster_size: int,
        k_cluster_size: int,
        *,
        seed: int | None = None,
        hashing: Hashing = "projection",
        impl: Literal["fused", "reference"] = "fused",
        kernel: Kernel = "auto",
        summary: Summary = "none",
    ) -> None:
        super().__init__()
        if n_hashes < 1:
            raise ValueError(f"n_hashes must be >= 1, got {n_hashes}")
        check_cluster_sizes(q_cluster_size, k_cluster_size, q_cluster_size, k_cluster_size)
        self.n_hashes = n_hashes
        self.q_cluster_size = q_cluster_size
        self.k_cluster_size = k_cluster_size
        self.seed = seed
        self.hashing = hashing
        self.impl = impl
        self.kernel = kernel
        self.summary = summary

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, scale: float | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """q (..., Nq, d), k (..., Nk, d), v (..., Nk, dv) -> (..., Nq, dv). ``generator`` overrides ``seed``."""
        if generator is None and self.seed is not None:
            generator = torch.Generator().manual_seed(self.seed)
        return smyrf_attention(
            q,
            k,
            v,
            n_hashes=self.n_hashes,
            q_cluster_size=self.q_cluster_size,
            k_cluster_size=self.k_cluster_size,
            scale=scale,
            generator=generator,
            hashing=self.hashing,
            impl=self.impl,
            kernel=self.kernel,
            summary=self.summary,
        )

    def extra_repr(self) -> str:
        return (
            f"n_hashes={self.n_hashes}, q_cluster_size={self.q_cluster_size}, "
            f"k_cluster_size={self.k_cluster_size}, seed={self.seed}, hashing={self.hashing!r}, impl={self.impl!r}, "
            f"summary={self.summary!r}"
        )
