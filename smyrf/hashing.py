"""Clustering half of SMYRF: XBOX+ lift, random projections, balanced sort-and-chunk clusters.

Everything here routes tokens and carries no gradient: it runs on detached tensors in float32 (float64 stays float64),
with autocast disabled, so that bf16 training still sorts by accurate hash values.

Shape legend: B attention rows (batch x heads, flattened); Nq, Nk queries and keys; d query/key dim; H hash rounds;
nc clusters per round; cq, ck query/key cluster sizes. A tilde (``q_lift``) is a vector after the lift, dim d+2.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["asymmetric_transform", "draw_projections", "hash_rounds", "balanced_clusters"]


def _hash_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (gradcheck); everything else (bf16, fp16, fp32) is hashed in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def asymmetric_transform(q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """XBOX+ lift: map queries and keys to d+2 dims where Euclidean nearness equals a large inner product.

    With M_b^2 = max_i |q_bi|^2 + max_j |k_bj|^2 per row b:
    q_lift = [q, 0, sqrt(M^2 - |q|^2)], k_lift = [k, sqrt(M^2 - |k|^2), 0], so |q_lift| = |k_lift| = M and
    q_lift . k_lift = q . k. q and k are therefore not normalised (unlike Reformer's angular hashing).

    Args:
        q: (B, Nq, d) queries.
        k: (B, Nk, d) keys.

    Returns:
        q_lift (B, Nq, d+2) and k_lift (B, Nk, d+2), detached, in the hashing dtype.
    """
    dtype = _hash_dtype(q.dtype)
    with torch.autocast(q.device.type, enabled=False):
        q = q.detach().to(dtype)
        k = k.detach().to(dtype)
        q_sq = (q * q).sum(-1, keepdim=True)  # (B, Nq, 1)
        k_sq = (k * k).sum(-1, keepdim=True)  # (B, Nk, 1)
        m_sq = q_sq.amax(dim=1, keepdim=True) + k_sq.amax(dim=1, keepdim=True)  # (B, 1, 1)
        # The clamp guards against -eps from rounding (e.g. all-zero keys), which would give NaN.
        q_extra = torch.sqrt((m_sq - q_sq).clamp_min(0))  # (B, Nq, 1)
        k_extra = torch.sqrt((m_sq - k_sq).clamp_min(0))  # (B, Nk, 1)
        q_lift = torch.cat([q, torch.zeros_like(q_extra), q_extra], dim=-1)  # (B, Nq, d+2)
        k_lift = torch.cat([k, k_extra, torch.zeros_like(k_extra)], dim=-1)  # (B, Nk, d+2)
    return q_lift, k_lift


def draw_projections(
    d: int,
    n_hashes: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw the (d+2, H) Gaussian projection matrix, one direction per hash round.

    The draw uses ``generator`` on its own device (a CPU generator for any input device, as the BigGAN layer does) and
    never the global RNG, so z-sampling streams are untouched. ``generator=None`` seeds a fresh generator from OS
    entropy: non-reproducible projections, still without touching the global RNG. The matrix is tiny, so drawing on the
    host and copying it to ``device`` costs nothing measurable.

    Returns:
        (d+2, H) tensor on ``device``.
    """
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    proj = torch.randn(d + 2, n_hashes, generator=generator, device=generator.device, dtype=dtype)  # (d+2, H)
    return proj.to(device) if device is not None else proj


def hash_rounds(q_lift: Tensor, k_lift: Tensor, projections: Tensor) -> tuple[Tensor, Tensor]:
    """One scalar hash per lifted vector and round: h_t(x) = a_t . x.

    Only the order of the hash values is used later, so E2LSH's offset and bucket width would change nothing and
    are not part of this scheme. The same directions hash queries and keys (clusters pair their quantiles).

    Args:
        q_lift: (B, Nq, d+2); k_lift: (B, Nk, d+2); projections: (d+2, H).

    Returns:
        hq (H, B, Nq) and hk (H, B, Nk).
    """
    with torch.autocast(q_lift.device.type, enabled=False):
        proj = projections.to(device=q_lift.device, dtype=q_lift.dtype)
        hq = torch.einsum("bnd,dh->hbn", q_lift, proj)  # (H, B, Nq)
        hk = torch.einsum("bnd,dh->hbn", k_lift, proj)  # (H, B, Nk)
    return hq, hk


def balanced_clusters(hq: Tensor, hk: Tensor, q_cluster_size: int, k_cluster_size: int) -> tuple[Tensor, Tensor]:
    """Sort each round's hashes; the c-th block of cq sorted queries meets the c-th block of ck sorted keys.

    Clusters are balanced by construction (exactly cq queries and ck keys each). The sort is stable so that ties
    (duplicate or zero vectors) are ordered deterministically on every backend.

    Args:
        hq: (H, B, Nq); hk: (H, B, Nk); cluster sizes must divide Nq and Nk with Nq/cq == Nk/ck.

    Returns:
        perm_q (H, B, Nq) and perm_k (H, B, Nk), int64: sorted position -> original index. The cluster of sorted
        position i is i // cq (queries) or i // ck (keys).
    """
    nq, nk = hq.shape[-1], hk.shape[-1]
    check_cluster_sizes(nq, nk, q_cluster_size, k_cluster_size)
    perm_q = torch.argsort(hq, dim=-1, stable=True)  # (H, B, Nq)
    perm_k = torch.argsort(hk, dim=-1, stable=True)  # (H, B, Nk)
    return perm_q, perm_k


def check_cluster_sizes(nq: int, nk: int, q_cluster_size: int, k_cluster_size: int) -> None:
    """Raise ValueError unless cq | Nq, ck | Nk and Nq/cq == Nk/ck (a cluster must never span two rows)."""
    if q_cluster_size < 1 or k_cluster_size < 1:
        raise ValueError(f"cluster sizes must be >= 1, got q_cluster_size={q_cluster_size}, k_cluster_size={k_cluster_size}")
    if nq % q_cluster_size:
        raise ValueError(
            f"Nq={nq} is not divisible by q_cluster_size={q_cluster_size} (Nq % cq = {nq % q_cluster_size}); "
            "choose a q_cluster_size that divides the number of queries"
        )
    if nk % k_cluster_size:
        raise ValueError(
            f"Nk={nk} is not divisible by k_cluster_size={k_cluster_size} (Nk % ck = {nk % k_cluster_size}); "
            "choose a k_cluster_size that divides the number of keys"
        )
    if nq // q_cluster_size != nk // k_cluster_size:
        raise ValueError(
            f"query and key cluster counts differ: Nq/cq = {nq}/{q_cluster_size} = {nq // q_cluster_size} but "
            f"Nk/ck = {nk}/{k_cluster_size} = {nk // k_cluster_size}; pick cluster sizes with Nq/cq == Nk/ck"
        )
