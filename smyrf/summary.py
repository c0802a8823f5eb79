"""Cluster summaries: each query also attends one summary of every cluster it did not meet.

The paper's SMYRF gives a query softmax attention over the keys of its own clusters and drops the rest; on real
attention the dropped keys hold about half of the dense mass at 50 % score memory (benchmarks/approximation.py), and
renormalising over the kept half is where most of the error comes from. A summary stands in for one other cluster c
(its ck keys k_j, values v_j) of the first round with one logit and one value:

    logit_ic = s q_i . kbar_c + log ck + log H            (the cluster's sum of exp(s q_i . k_j) at first order)
    value_ic = vbar_c                                      ("mean": the cluster's mean value)
             + lambda_ic s C_c^T q_i                       ("taylor": + the first-order change of the weighted mean)

with kbar, vbar the cluster means, C_c = (1/ck) sum_j (k_j - kbar) v_j^T (d x dv) and Sigma_c the keys' covariance.
exp(s q.k_j) = exp(s q.kbar) exp(delta_j) with delta_j = s q.(k_j - kbar); to first order in delta the cluster's
softmax-weighted value is vbar + s C^T q. That only holds for |delta| of order one, and real keys have outliers (the
attention-sink keys of DINOv2 reach logits of 320), so the term is damped by lambda_ic = min(1, 1/sigma_ic),
sigma_ic^2 = s^2 q_i^T Sigma_c q_i, the variance of delta over the cluster: the implied weights 1 + lambda delta_j then
have a standard deviation of at most one. Measured on real inputs at 50 % memory (scratch study for issue 14,
relative output error): undamped Taylor is worse than damped on DINOv2 (layer 0: 0.44 against 0.23), damping by the
cluster's max or RMS radius damps too much (MiniLM: 0.37 and 0.36 against 0.30).

Which rounds: SMYRF's own part is the multiset union of the H rounds' clusters (sum over rounds of the in-cluster
exp(S)), i.e. H times one round's estimate of the full sum. The summaries are taken from round 0 alone and weighted H
times (the log H), so both parts estimate H times their share of the full sum. Summarising every round instead
measured slightly better (BigGAN demo layer 0.249 against 0.257, MiniLM 0.295 against 0.306) at H times the cost,
which broke the 1.2x time budget on CPU.

Every summary joins the same softmax as the exact in-cluster logits: this module returns the summaries' output and
logsumexp (out_s, L_s), which ``smyrf.fused`` (``extra=``) or :func:`merge_softmax` merge with SMYRF's part exactly.
With nc = 1 nothing is missed and there is nothing to summarise: the result stays dense attention. Cost per query:
nc - 1 extra logits (score memory H ck + nc instead of H ck) and, for "taylor", O(nc d (d + dv)) multiply-adds;
nothing the size of the scores is kept for backward (the summaries are recomputed there).

Shape legend: B rows; Nq, Nk; d, dv; H rounds; nc clusters per round; cq, ck cluster sizes; ``s_`` prefix = sorted.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

__all__ = ["Summary", "SUMMARIES", "cluster_summaries", "merge_softmax", "logaddexp"]

Summary = Literal["none", "mean", "taylor"]
SUMMARIES: tuple[str, ...] = ("none", "mean", "taylor")


def _query_clusters(perm_q: Tensor, n_clusters: int) -> Tensor:
    """perm_q (B, Nq) of one round -> each query's cluster id (B, Nq), by one scatter (no second argsort)."""
    nq = perm_q.shape[-1]
    ids = (torch.arange(nq, device=perm_q.device) // (nq // n_clusters)).expand_as(perm_q)  # (B, Nq)
    return torch.empty_like(perm_q).scatter_(-1, perm_q, ids)


def _summaries(q: Tensor, k: Tensor, v: Tensor, perm_q: Tensor, perm_k: Tensor, n_clusters: int, n_hashes: int,
               scale: float, order: str) -> tuple[Tensor, Tensor]:
    """The summaries' softmax part for one round's clusters, plain autograd: (out_s (B, Nq, dv), L_s (B, Nq))."""
    b, nq, d = q.shape
    nk, dv = k.shape[1], v.shape[-1]
    nc, ck = n_clusters, nk // n_clusters
    s_k = k.gather(1, perm_k.unsqueeze(-1).expand(-1, -1, d)).view(b, nc, ck, d)  # (B, nc, ck, d)
    s_v = v.gather(1, perm_k.unsqueeze(-1).expand(-1, -1, dv)).view(b, nc, ck, dv)  # (B, nc, ck, dv)
    k_mean, v_mean = s_k.mean(2), s_v.mean(2)  # (B, nc, d), (B, nc, dv)
    logits = torch.bmm(q, k_mean.transpose(-1, -2)) * scale  # (B, Nq, nc); + log(ck H) is added to L below
    # Softmax without the query's own cluster (attended exactly), by zeroing its exp rather than a -inf logit:
    # vectorised exp of -inf took ~10x longer per element on CPU.
    # The shift is the largest *other* logit, so the sum below is >= 1 even when the own cluster's logit is far
    # above the rest (DINOv2: by 100 and more); the own entry is replaced before exp (no overflow) and then zeroed.
    # The own cluster is a mask compared elementwise, not a scatter into the logits: under XLA SPMD with the batch
    # sharded the partitioner all-gathered the scattered (B, Nq, 1) tensors (2 all-gathers of f32[4,1024,1] on 2
    # devices, tests/xla/checks.py smyrf_spmd); a comparison and masked_fill stay on each device's rows.
    own = _query_clusters(perm_q, nc).unsqueeze(-1) == torch.arange(nc, device=q.device)  # (B, Nq, nc) bool
    top = logits.detach().masked_fill(own, -math.inf).amax(-1, keepdim=True)  # (B, Nq, 1)
    weights = torch.exp((logits - top).masked_fill(own, 0.0)).masked_fill(own, 0.0)  # (B, Nq, nc)
    total = weights.sum(-1, keepdim=True)  # (B, Nq, 1), >= 1
    probs = weights / total  # (B, Nq, nc)
    lse = (top + torch.log(total)).squeeze(-1) + math.log(ck * n_hashes)  # (B, Nq)
    out = torch.bmm(probs, v_mean)  # (B, Nq, dv)
    if order == "mean":
        return out, lse
    k_dev = s_k - k_mean.unsqueeze(2)  # (B, nc, ck, d)
    sigma_k = torch.matmul(k_dev.transpose(-1, -2), k_dev) / ck  # (B, nc, d, d)
    slope = torch.matmul(k_dev.transpose(-1, -2), s_v).view(b, nc * d, dv) / ck  # (B, nc*d, dv); sum(k - kbar) = 0
    pairs = (q.unsqueeze(-1) * q.unsqueeze(-2)).view(b, nq, d * d)  # (B, Nq, d*d): q_a q_b
    var = torch.bmm(pairs, sigma_k.view(b, nc, d * d).transpose(1, 2)) * scale**2  # (B, Nq, nc): q^T Sigma_c q s^2
    factor = probs * torch.rsqrt(var.clamp_min(1.0)) * scale  # (B, Nq, nc): p s min(1, 1/sigma)
    # sum_c p_c lambda_c s C_c^T q as one GEMM: (p s lambda)_c q flattened to (B, Nq, nc*d), times the stacked C.
    weighted_q = (factor.unsqueeze(-1) * q.unsqueeze(2)).view(b, nq, nc * d)  # (B, Nq, nc*d)
    return out.baddbmm(weighted_q, slope), lse  # (B, Nq, dv), (B, Nq)


class _SummaryFunction(torch.autograd.Function):
    """``_summaries`` that saves only its inputs and recomputes itself in backward (no (B, Nq, nc)-sized tensor
    outlives the call; SMYRF's memory contract)."""

    @staticmethod
    def forward(ctx, q, k, v, perm_q, perm_k, n_clusters: int, n_hashes: int, scale: float, order: str):
        ctx.save_for_backward(q, k, v, perm_q, perm_k)
        ctx.args = (n_clusters, n_hashes, scale, order)
        return _summaries(q, k, v, perm_q, perm_k, *ctx.args)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout: Tensor, dlse: Tensor):
        q, k, v, perm_q, perm_k = ctx.saved_tensors
        inputs = [x.detach().requires_grad_() for x in (q, k, v)]
        with torch.enable_grad():
            out, lse = _summaries(*inputs, perm_q, perm_k, *ctx.args)
            grads = torch.autograd.grad((out, lse), inputs, (dout, dlse))
        return (*grads, None, None, None, None, None, None)


def cluster_summaries(
    q: Tensor, k: Tensor, v: Tensor, perm_q: Tensor, perm_k: Tensor, n_clusters: int, scale: float,
    order: Summary = "taylor",
) -> tuple[Tensor, Tensor]:
    """Softmax attention of every query over the summaries of the clusters of round 0 it was not in (weighted H times).

    Args:
        q (B, Nq, d), k (B, Nk, d), v (B, Nk, dv); perm_q (H, B, Nq), perm_k (H, B, Nk) from ``balanced_clusters``;
        n_clusters: nc >= 2; scale: the logit scale s; order: "mean" or "taylor" (module docstring).

    Returns:
        out_s (B, Nq, dv) and its logsumexp L_s (B, Nq), in fp32 (fp64 for fp64 inputs), to merge with SMYRF's
        (out, L) by ``smyrf_fused(..., extra=(out_s, L_s))`` or :func:`merge_softmax`. Differentiable in q, k, v.
    """
    if order not in ("mean", "taylor"):
        raise ValueError(f"order must be 'mean' or 'taylor', got {order!r}")
    if n_clusters < 2:
        raise ValueError(f"cluster summaries need nc >= 2 (with nc = 1 nothing is missed), got nc = {n_clusters}")
    dtype = torch.promote_types(q.dtype, torch.float32)  # bf16 inputs: the statistics and the merge stay fp32
    q, k, v = (x.to(dtype).contiguous() for x in (q, k, v))
    return _SummaryFunction.apply(q, k, v, perm_q[0], perm_k[0], n_clusters, perm_q.shape[0], scale, order)


def merge_softmax(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor) -> Tensor:
    """The softmax over the union of two sets of logits from their parts: (out (B, Nq, dv), L (B, Nq)) each."""
    lse = logaddexp(lse_a, lse_b)  # (B, Nq)
    return out_a * torch.exp(lse_a - lse).unsqueeze(-1) + out_b * torch.exp(lse_b - lse).unsqueeze(-1)


def logaddexp(a: Tensor, b: Tensor) -> Tensor:
    """log(exp(a) + exp(b)) for finite a, b, as max + log1p(exp(-|a - b|)): ``torch.logaddexp`` has no XLA lowering
    in torch-xla 2.9, so it ran on the host and read SMYRF's (B, Nq, 1) logsumexps back in every forward with
    summaries (2 host transfers per call, which under SPMD also all-gathered them: tests/xla/checks.py smyrf_spmd)."""
    return torch.maximum(a, b) + torch.log1p(torch.exp(-(a - b).abs()))
