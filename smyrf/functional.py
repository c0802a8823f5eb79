"""SMYRF attention (Daras, Kitaev, Odena, Dimakis, NeurIPS 2020, arXiv 2010.05315) as pure functions.

Steps, in order: ``asymmetric_transform`` (XBOX+ lift) -> ``hash_rounds`` (random projections per round) ->
``balanced_clusters`` (sort, chunk into nc clusters of cq queries and ck keys) -> ``attend_in_clusters`` (softmax
attention inside each cluster) -> ``unsort`` (scatter back to original order) -> ``combine_rounds`` (softmax over the
per-round logsumexp). The result is softmax attention over the multiset union of the keys each query met.

``smyrf_attention`` runs them end to end. Its default ``impl="fused"`` is the memory-lean custom autograd path of
``smyrf.fused``; ``impl="reference"`` chains the steps below with plain autograd, vectorised over rounds. With
``summary="mean"|"taylor"`` every query also attends one summary of each cluster it missed (``smyrf.summary``), merged
into the same softmax.

Implemented from the paper's mathematics; no code of the GPL reference implementation is used.

Shape legend: B attention rows (all leading dims, e.g. batch x heads, flattened); Nq, Nk queries and keys; d query/key
dim; dv value dim; H hash rounds; nc clusters per round; cq, ck query/key cluster sizes. ``s_`` prefix = sorted order.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from smyrf.fused import smyrf_fused
from smyrf.hashing import (
    asymmetric_transform,
    balanced_clusters,
    check_cluster_sizes,
    draw_projections,
    hash_rounds,
    kdtree_levels,
)
from smyrf.kernel_choice import Kernel, choose_kernel
from smyrf.summary import SUMMARIES, Summary, cluster_summaries, merge_softmax

__all__ = ["attend_in_clusters", "unsort", "combine_rounds", "smyrf_attention"]

Hashing = Literal["projection", "kdtree"]


def _gather_rounds(x: Tensor, perm: Tensor) -> Tensor:
    """x (B, N, e), perm (H, B, N) -> x in each round's sorted order, (H, B, N, e)."""
    n_hashes = perm.shape[0]
    index = perm.unsqueeze(-1).expand(-1, -1, -1, x.shape[-1])  # (H, B, N, e)
    return x.unsqueeze(0).expand(n_hashes, -1, -1, -1).gather(2, index)  # (H, B, N, e)


def attend_in_clusters(
    q: Tensor, k: Tensor, v: Tensor, perm_q: Tensor, perm_k: Tensor, *, n_clusters: int, scale: float
) -> tuple[Tensor, Tensor]:
    """Softmax attention inside every cluster of every round, all rounds at once (plain autograd).

    Args:
        q: (B, Nq, d); k: (B, Nk, d); v: (B, Nk, dv); perm_q: (H, B, Nq); perm_k: (H, B, Nk).
        n_clusters: nc = Nq/cq = Nk/ck. scale: the logit scale s.

    Returns:
        s_out (H, B, nc, cq, dv), the within-cluster outputs in sorted order, and s_lse (H, B, nc, cq), the
        per-query logsumexp of the cluster's logits (used to weight the rounds).
    """
    n_hashes, b, nq = perm_q.shape
    nk = perm_k.shape[-1]
    nc = n_clusters
    s_q = _gather_rounds(q, perm_q).view(n_hashes, b, nc, nq // nc, q.shape[-1])  # (H, B, nc, cq, d)
    s_k = _gather_rounds(k, perm_k).view(n_hashes, b, nc, nk // nc, k.shape[-1])  # (H, B, nc, ck, d)
    s_v = _gather_rounds(v, perm_k).view(n_hashes, b, nc, nk // nc, v.shape[-1])  # (H, B, nc, ck, dv)
    scores = torch.matmul(s_q, s_k.transpose(-1, -2)) * scale  # (H, B, nc, cq, ck)
    s_lse = torch.logsumexp(scores, dim=-1)  # (H, B, nc, cq)
    probs = torch.exp(scores - s_lse.unsqueeze(-1))  # (H, B, nc, cq, ck)
    return torch.matmul(probs, s_v), s_lse  # (H, B, nc, cq, dv), (H, B, nc, cq)


def unsort(s_out: Tensor, s_lse: Tensor, perm_q: Tensor) -> tuple[Tensor, Tensor]:
    """Put each round's outputs back in original query order with one scatter (never a second argsort).

    Args:
        s_out: (H, B, nc, cq, dv); s_lse: (H, B, nc, cq); perm_q: (H, B, Nq).

    Returns:
        out (H, B, Nq, dv) and lse (H, B, Nq) with out[t, b, perm_q[t, b, i]] = s_out[t, b, i].
    """
    n_hashes, b, nq = perm_q.shape
    s_out = s_out.reshape(n_hashes, b, nq, s_out.shape[-1])  # (H, B, Nq, dv)
    s_lse = s_lse.reshape(n_hashes, b, nq)  # (H, B, Nq)
    index = perm_q.unsqueeze(-1).expand(-1, -1, -1, s_out.shape[-1])  # (H, B, Nq, dv)
    out = torch.zeros_like(s_out).scatter(2, index, s_out)  # (H, B, Nq, dv)
    lse = torch.zeros_like(s_lse).scatter(2, perm_q, s_lse)  # (H, B, Nq)
    return out, lse


def combine_rounds(out: Tensor, lse: Tensor) -> Tensor:
    """Merge rounds with weights w_t = softmax_t(lse_t) per query; this makes the result the multiset-union softmax.

    Args:
        out: (H, B, Nq, dv); lse: (H, B, Nq).

    Returns:
        (B, Nq, dv).
    """
    weights = torch.softmax(lse, dim=0)  # (H, B, Nq), >= 0 and summing to 1 over rounds
    return (weights.unsqueeze(-1) * out).sum(0)  # (B, Nq, dv)


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, n_hashes: int) -> None:
    """Raise ValueError naming the numbers for every shape the algorithm cannot honour."""
    if q.dim() < 2 or k.dim() < 2 or v.dim() < 2:
        shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        raise ValueError(f"q, k, v need shape (..., N, dim), got {shapes}")
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        lead = f"q {tuple(q.shape[:-2])}, k {tuple(k.shape[:-2])}, v {tuple(v.shape[:-2])}"
        raise ValueError(f"leading (batch/head) dims differ: {lead}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k need the same feature dim d, got q d={q.shape[-1]} and k d={k.shape[-1]}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v need the same number of tokens Nk, got k Nk={k.shape[-2]} and v Nk={v.shape[-2]}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v need one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v need one device, got {q.device}, {k.device}, {v.device}")
    if n_hashes < 1:
        raise ValueError(f"n_hashes must be >= 1, got {n_hashes}")


def _check_projections(projections: Tensor, d: int, n_hashes: int, levels: int | None) -> None:
    expected = (d + 2, n_hashes) if levels is None else (d + 2, n_hashes, levels)
    if tuple(projections.shape) != expected:
        what = "(d+2, n_hashes)" if levels is None else "(d+2, n_hashes, kdtree_levels(nc))"
        raise ValueError(f"projections must have shape {what} = {expected}, got {tuple(projections.shape)}")


def _attend(
    q: Tensor, k: Tensor, v: Tensor, perm_q: Tensor, perm_k: Tensor, n_clusters: int, scale: float, impl: str,
    kernel: Kernel, summary: Summary,
) -> Tensor:
    """Attention inside the clusters of all rounds (fused or reference), plus the summaries of the missed clusters.
    Rows: q (B, Nq, d), k (B, Nk, d), v (B, Nk, dv), perms (H, B, N) -> (B, Nq, dv)."""
    extra = None
    if summary != "none" and n_clusters > 1:  # nc = 1: nothing was missed, the result is exact already
        extra = cluster_summaries(q, k, v, perm_q, perm_k, n_clusters, scale, summary)  # (B, Nq, dv), (B, Nq)
    if impl == "fused":
        kernel_name = choose_kernel(kernel, q, k, v, perm_q, perm_k, n_clusters, scale)
        return smyrf_fused(q, k, v, perm_q, perm_k, n_clusters, scale, kernel_name, extra=extra)  # (B, Nq, dv)
    s_out, s_lse = attend_in_clusters(q, k, v, perm_q, perm_k, n_clusters=n_clusters, scale=scale)
    out_rounds, lse_rounds = unsort(s_out, s_lse, perm_q)  # (H, B, Nq, dv), (H, B, Nq)
    out = combine_rounds(out_rounds, lse_rounds)  # (B, Nq, dv)
    if extra is None:
        return out
    lse = torch.logsumexp(lse_rounds, dim=0)  # (B, Nq)
    return merge_softmax(out.to(extra[0].dtype), lse.to(extra[1].dtype), *extra).to(q.dtype)  # (B, Nq, dv)


def smyrf_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    n_hashes: int,
    q_cluster_size: int,
    k_cluster_size: int,
    scale: float | None = None,
    generator: torch.Generator | None = None,
    return_clusters: bool = False,
    projections: Tensor | None = None,
    hashing: Hashing = "projection",
    impl: Literal["fused", "reference"] = "fused",
    kernel: Kernel = "auto",
    summary: Summary = "none",
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """Approximate softmax(scale * q k^T) v by attention inside balanced LSH clusters, merged over H rounds.

    Args:
        q: (..., Nq, d) queries; k: (..., Nk, d) keys; v: (..., Nk, dv) values. Leading dims (batch, heads, ...)
            must be equal for all three and are treated as independent rows.
        n_hashes: H, the hash rounds. Score memory is H * Nq * ck per row (dense: Nq * Nk).
        q_cluster_size, k_cluster_size: cq, ck. Need Nq % cq == 0, Nk % ck == 0 and Nq/cq == Nk/ck.
        scale: logit scale s; None means 1/sqrt(d) like ``scaled_dot_product_attention``. BigGAN/SAGAN use 1.0.
        generator: draws the (d+2, H) projections (on the generator's device, usually CPU) without touching the
            global RNG; the same generator state gives the same clusters and output. None draws fresh projections
            from OS entropy (non-reproducible).
        return_clusters: also return the permutations (perm_q (H, ..., Nq), perm_k (H, ..., Nk)): sorted position
            -> original index; the cluster of sorted position i is i // cq (or i // ck).
        projections: fixed projections (see ``draw_projections``), (d+2, H), or (d+2, H, kdtree_levels(nc)) for
            ``hashing="kdtree"``; they override ``generator``.
        hashing: "projection" (the paper's: sort by one random projection per round) or "kdtree" (a balanced
            k-d tree per round: lower error at the same H, cq, ck; see ``smyrf.hashing``).
        impl: "fused" (default) processes rounds one at a time and recomputes in backward, storing only q, k, v,
            the permutations, the output and one logsumexp per query; it is not twice differentiable.
            "reference" chains the pure steps with plain autograd (all rounds at once, more memory).
        kernel: attention inside clusters for ``impl="fused"`` (``smyrf.kernels``): "auto" (``smyrf.kernel_choice``:
            on CPU the fused CPU flash kernel when ck >= 256, else math; on CUDA the fastest fused kernel that agrees
            with math, measured once per shape; math elsewhere), "math" (the exact oracle), "flash", "efficient"
            (CUDA) or "flex". Every kernel keeps scores, logsumexp and exp in fp32 for bf16 inputs.
        summary: "none" (the paper's: a query attends only its clusters), "mean" or "taylor": it also attends one
            summary (log-count-biased mean key; mean value, or mean value plus a damped first-order correction) of
            every cluster of round 0 it missed (``smyrf.summary``). Costs nc - 1 logits per query; exact when
            nc = 1. See benchmarks/approximation.py for the error on real attention.

    Returns:
        (..., Nq, dv) in q's dtype, or (out, (perm_q, perm_k)) when ``return_clusters``.

    Under autocast, the lift and hashing run in fp32 and the attention in the autocast dtype.
    """
    _check_inputs(q, k, v, n_hashes)
    *lead, nq, d = q.shape
    nk, dv = k.shape[-2], v.shape[-1]
    check_cluster_sizes(nq, nk, q_cluster_size, k_cluster_size)
    n_clusters = nq // q_cluster_size
    if hashing not in ("projection", "kdtree"):
        raise ValueError(f"hashing must be 'projection' or 'kdtree', got {hashing!r}")
    if impl not in ("fused", "reference"):
        raise ValueError(f"impl must be 'fused' or 'reference', got {impl!r}")
    if summary not in SUMMARIES:
        raise ValueError(f"summary must be one of {', '.join(map(repr, SUMMARIES))}, got {summary!r}")
    levels = kdtree_levels(n_clusters) if hashing == "kdtree" else None
    if projections is not None:
        _check_projections(projections, d, n_hashes, levels)
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    out_dtype = q.dtype
    device_type = q.device.type
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
        q, k, v = q.to(compute_dtype), k.to(compute_dtype), v.to(compute_dtype)

    q_rows = q.reshape(-1, nq, d)  # (B, Nq, d)
    k_rows = k.reshape(-1, nk, d)  # (B, Nk, d)
    v_rows = v.reshape(-1, nk, dv)  # (B, Nk, dv)
    q_lift, k_lift = asymmetric_transform(q_rows, k_rows)  # (B, Nq, d+2), (B, Nk, d+2)
    if projections is None:
        projections = draw_projections(d, n_hashes, generator, device=q.device, levels=levels)  # (d+2, H[, L])
    hq, hk = hash_rounds(q_lift, k_lift, projections)  # (H, B, Nq[, L]), (H, B, Nk[, L])
    perm_q, perm_k = balanced_clusters(hq, hk, q_cluster_size, k_cluster_size)  # (H, B, Nq), (H, B, Nk)

    with torch.autocast(device_type, enabled=False):
        out = _attend(q_rows, k_rows, v_rows, perm_q, perm_k, n_clusters, scale, impl, kernel, summary)  # (B, Nq, dv)
    out = out.reshape(*lead, nq, dv).to(out_dtype)  # (..., Nq, dv)
    if return_clusters:
        return out, (perm_q.reshape(n_hashes, *lead, nq), perm_k.reshape(n_hashes, *lead, nk))
    return out
