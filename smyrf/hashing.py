"""Clustering half of SMYRF: XBOX+ lift, random projections, balanced sort-and-chunk clusters.

Everything here routes tokens and carries no gradient: it runs on detached tensors in float32 (float64 stays float64),
with autocast disabled, so that bf16 training still sorts by accurate hash values.

Two clustering schemes, both balanced (exactly cq queries and ck keys per cluster), both pairing quantiles of the
same projections of queries and keys:
- "projection" (the paper's): one random direction per round; clusters are nc consecutive slabs of the sort.
- "kdtree" (ours): a balanced k-d tree per round. nc is split into its prime factors f_1..f_L (8 -> 2, 2, 2); level l
  cuts every cell of the previous level into f_l equal quantile parts along its own random direction. Slabs are thin
  in one direction only, k-d cells in L directions, so a cluster's members are nearer to each other. At equal score
  memory (same H, cq, ck) it lowers the error (benchmarks/attention.py: on tokens around 32 centres, G128@128
  0.36 against 0.58, G128@64 0.24 against 0.48). It costs 2L-1 sorts per round instead of one.

Shape legend: B attention rows (batch x heads, flattened); Nq, Nk queries and keys; d query/key dim; H hash rounds;
L k-d tree levels; nc clusters per round; cq, ck query/key cluster sizes. ``q_lift`` is a vector after the lift (d+2).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "asymmetric_transform",
    "draw_projections",
    "hash_rounds",
    "balanced_clusters",
    "kdtree_levels",
    "check_cluster_sizes",
    "to_device",
]


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
    levels: int | None = None,
) -> Tensor:
    """Draw the Gaussian projections: (d+2, H), one direction per round, or with ``levels=L`` (the "kdtree" scheme,
    see ``kdtree_levels``) (d+2, H, L), one direction per round and tree level.

    The draw uses ``generator`` on its own device (a CPU generator for any input device, as the BigGAN layer does) and
    never the global RNG, so z-sampling streams are untouched. ``generator=None`` seeds a fresh generator from OS
    entropy: non-reproducible projections, still without touching the global RNG. The result reaches ``device``
    without a host sync (:func:`to_device`).

    Returns:
        (d+2, H) or (d+2, H, L) tensor on ``device``.
    """
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    shape = (d + 2, n_hashes) if levels is None else (d + 2, n_hashes, levels)
    proj = torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)  # (d+2, H[, L])
    return to_device(proj, device) if device is not None else proj


def to_device(x: Tensor, device: torch.device | str) -> Tensor:
    """A small host tensor on ``device`` without blocking the host.

    CUDA: staged in pinned memory and copied with ``non_blocking=True`` (the caching host allocator keeps the staging
    buffer until the copy has run), so the host never waits for the GPU; a plain ``.to`` from pageable memory is a
    full stream sync (3 per BigGAN iteration at the paper config). XLA: ``.to`` uploads device data, an input of the
    graph (no graph cut, no recompilation for new values). Elsewhere: ``.to``.

    Why a host generator and not a CUDA one: the host stream is one stream on every device, so the checkpointed state
    of a layer's generator resumes bit-identically on CPU, CUDA and XLA. Its costs: a CUDA graph that captured the copy
    replays the same staged values (draw the projections outside the captured region), and ``torch.compile`` breaks
    the graph at the host draw (the attention kernels on either side still compile). A device generator would be
    capturable but device-specific (its state does not transfer to a CPU or XLA resume).
    """
    device = torch.device(device)
    if x.device == device:
        return x
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def _project(x: Tensor, projections: Tensor, matmul: bool) -> Tensor:
    """x (B, N, d+2) . projections (d+2, H[, L]) -> (H, B, N[, L]) in x's dtype, exactly; ``matmul`` on the CPU only.

    Off the CPU as d+2 multiply-adds, not a matmul: with TF32 enabled a CUDA matmul rounds both operands to 10-bit
    mantissas (and XLA on TPU defaults to bf16 passes), while the hash must stay exact fp32: only its order is used, and
    near-ties decide clusters. On the CPU a matmul is exact fp32 and one op: the 14 multiply-adds cost 11 % of SMYRF's
    fwd+bwd at G128@128 on a busy 2-core machine (each small op pays the threads' barrier), the einsum nothing.
    """
    if matmul:
        return torch.einsum("bnd,dh->hbn" if projections.dim() == 2 else "bnd,dhl->hbnl", x, projections)
    extra = projections.dim() - 2  # 1 for "kdtree" (a level axis), else 0
    coords = x.movedim(-1, 0).contiguous()  # (d+2, B, N)
    h = None
    for c in range(coords.shape[0]):
        coord = coords[c].view(1, *x.shape[:-1], *([1] * extra))  # (1, B, N[, 1])
        direction = projections[c].reshape(projections.shape[1], 1, 1, *projections.shape[2:])  # (H, 1, 1[, L])
        h = coord * direction if h is None else h.addcmul_(coord, direction)
    return h  # (H, B, N[, L])


def hash_rounds(q_lift: Tensor, k_lift: Tensor, projections: Tensor) -> tuple[Tensor, Tensor]:
    """One scalar hash per lifted vector and round: h_t(x) = a_t . x.

    Only the order of the hash values is used later, so E2LSH's offset and bucket width would change nothing and
    are not part of this scheme. The same directions hash queries and keys (clusters pair their quantiles).

    Args:
        q_lift: (B, Nq, d+2); k_lift: (B, Nk, d+2); projections: (d+2, H), or (d+2, H, L) for "kdtree".

    Returns:
        hq (H, B, Nq) and hk (H, B, Nk), or (H, B, Nq, L) and (H, B, Nk, L) for "kdtree".
    """
    with torch.autocast(q_lift.device.type, enabled=False):
        proj = to_device(projections, q_lift.device).to(q_lift.dtype)
        matmul = q_lift.device.type == "cpu"
        return _project(q_lift, proj, matmul), _project(k_lift, proj, matmul)  # (H, B, Nq[, L]), (H, B, Nk[, L])


def balanced_clusters(hq: Tensor, hk: Tensor, q_cluster_size: int, k_cluster_size: int) -> tuple[Tensor, Tensor]:
    """Sort each round's hashes; the c-th block of cq sorted queries meets the c-th block of ck sorted keys.

    Clusters are balanced by construction (exactly cq queries and ck keys each). The sort is stable so that ties
    (duplicate or zero vectors) are ordered deterministically on every backend.

    Args:
        hq: (H, B, Nq); hk: (H, B, Nk); cluster sizes must divide Nq and Nk with Nq/cq == Nk/ck.
            With per-level hashes hq (H, B, Nq, L), hk (H, B, Nk, L), L == kdtree_levels(nc), the clusters are the
            leaves of a balanced k-d tree (module docstring).

    Returns:
        perm_q (H, B, Nq) and perm_k (H, B, Nk), int64: sorted position -> original index. The cluster of sorted
        position i is i // cq (queries) or i // ck (keys).
    """
    kdtree = hq.dim() == 4
    nq, nk = (hq.shape[-2], hk.shape[-2]) if kdtree else (hq.shape[-1], hk.shape[-1])
    check_cluster_sizes(nq, nk, q_cluster_size, k_cluster_size)
    if not kdtree:
        return torch.argsort(hq, dim=-1, stable=True), torch.argsort(hk, dim=-1, stable=True)  # (H, B, N)
    factors = _prime_factors(nq // q_cluster_size)
    if hq.shape[-1] != len(factors) or hk.shape[-1] != len(factors):
        raise ValueError(
            f"kdtree hashing with nc={nq // q_cluster_size} clusters needs {len(factors)} levels {factors}, "
            f"got hashes with {hq.shape[-1]} and {hk.shape[-1]} levels"
        )
    return _kdtree_sort(hq, factors), _kdtree_sort(hk, factors)


def _prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while n > 1:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    return factors


def kdtree_levels(n_clusters: int) -> int:
    """Levels L of the "kdtree" scheme for nc clusters: the number of prime factors of nc (8 -> 3; 1 -> 0)."""
    return len(_prime_factors(n_clusters))


def _kdtree_sort(h: Tensor, factors: list[int]) -> Tensor:
    """h (H, B, N, L) -> perm (H, B, N) that orders tokens by k-d tree leaf, each leaf holding N/nc tokens.

    Level l stably sorts by its hash, then stably by the current cell, so tokens are ordered by (cell, hash_l);
    position p inside a parent cell of size m then goes to child f_l * cell + p * f_l // m. Only argsort, gather
    and scatter: static shapes for XLA.
    """
    n = h.shape[2]
    if not factors:  # a single cluster: any order
        return torch.arange(n, device=h.device).expand(h.shape[:3]).contiguous()  # (H, B, N)
    pos = torch.arange(n, device=h.device)  # (N,)
    perm = torch.argsort(h[..., 0], dim=-1, stable=True)  # (H, B, N)
    parent_size = n
    for level, f in enumerate(factors[:-1]):
        child = (pos // parent_size) * f + (pos % parent_size) * f // parent_size  # (N,), cell of sorted position
        cell = torch.empty_like(perm).scatter_(-1, perm, child.expand_as(perm))  # (H, B, N) in original order
        parent_size //= f
        perm = torch.argsort(h[..., level + 1], dim=-1, stable=True)  # (H, B, N)
        perm = perm.gather(-1, torch.argsort(cell.gather(-1, perm), dim=-1, stable=True))  # by (cell, hash)
    return perm


def check_cluster_sizes(nq: int, nk: int, q_cluster_size: int, k_cluster_size: int) -> None:
    """Raise ValueError unless cq | Nq, ck | Nk and Nq/cq == Nk/ck (a cluster must never span two rows).

    The one check of cluster sizes: ``smyrf_attention`` calls it on every call, and layers built on SMYRF call it
    once when they are configured (e.g. BigGAN's attention block, with its token counts).
    """
    cq, ck = q_cluster_size, k_cluster_size
    if cq < 1 or ck < 1:
        raise ValueError(f"cluster sizes must be >= 1, got q_cluster_size={cq}, k_cluster_size={ck}")
    if nq % cq:
        raise ValueError(
            f"q_cluster_size {cq} does not divide the {nq} queries (Nq={nq} with q_cluster_size={cq} leaves "
            f"Nq % cq = {nq % cq}); choose a q_cluster_size that divides the number of queries"
        )
    if nk % ck:
        raise ValueError(
            f"k_cluster_size {ck} does not divide the {nk} keys (Nk={nk} with k_cluster_size={ck} leaves "
            f"Nk % ck = {nk % ck}); choose a k_cluster_size that divides the number of keys"
        )
    if nq // cq != nk // ck:
        raise ValueError(
            f"query and key cluster counts differ: Nq/cq = {nq}/{cq} = {nq // cq} but Nk/ck = {nk}/{ck} = {nk // ck} "
            f"({nq}/{cq} = {nq // cq} query clusters but {nk}/{ck} = {nk // ck} key clusters); pick cluster sizes "
            "with Nq/cq == Nk/ck"
        )
