"""SMYRF: efficient attention by asymmetric LSH clustering (Daras et al., NeurIPS 2020), for PyTorch.

Standalone: imports only torch and knows nothing of BigGAN, configs or devices.

Public API:
- ``smyrf_attention(q, k, v, *, n_hashes, q_cluster_size, k_cluster_size, scale=None, generator=None,
  return_clusters=False, projections=None, hashing="projection", impl="fused", kernel="auto", summary="none")``
- ``SmyrfAttention(n_hashes, q_cluster_size, k_cluster_size, *, seed=None, ...)``, an nn.Module without parameters
- ``dense_attention(q, k, v, scale=None)``, the exact oracle
- the pure steps: ``asymmetric_transform``, ``draw_projections``, ``hash_rounds``, ``balanced_clusters``,
  ``attend_in_clusters``, ``unsort``, ``combine_rounds`` (and ``kdtree_levels`` for the "kdtree" hashing)
- ``cluster_summaries`` and ``merge_softmax`` (``summary="mean"|"taylor"``: one summary per missed cluster)
- ``check_cluster_sizes(Nq, Nk, cq, ck)``: the one validation of cluster sizes, for layers built on SMYRF

Modules: ``functional`` (the steps, ``smyrf_attention``), ``hashing`` (lift, projections, clusters), ``fused`` (the
memory-lean autograd path), ``kernels`` (attention inside clusters: math oracle, CPU/CUDA flash, CUDA memory-efficient,
flex), ``kernel_choice`` (which kernel "auto" runs), ``routing`` (the gathers: flat, or batch-preserving for SPMD).

Shape legend: B rows (leading dims flattened); Nq, Nk queries/keys; d, dv query/key and value dims; H hash rounds;
nc clusters per round; cq, ck cluster sizes; ``s_`` prefix = sorted (clustered) order of one round.
"""

from smyrf.attention import SmyrfAttention
from smyrf.dense import dense_attention
from smyrf.functional import attend_in_clusters, combine_rounds, smyrf_attention, unsort
from smyrf.hashing import (
    asymmetric_transform,
    balanced_clusters,
    check_cluster_sizes,
    draw_projections,
    hash_rounds,
    kdtree_levels,
)
from smyrf.summary import cluster_summaries, merge_softmax

__all__ = [
    "smyrf_attention",
    "SmyrfAttention",
    "dense_attention",
    "asymmetric_transform",
    "draw_projections",
    "hash_rounds",
    "balanced_clusters",
    "attend_in_clusters",
    "unsort",
    "combine_rounds",
    "kdtree_levels",
    "cluster_summaries",
    "merge_softmax",
    "check_cluster_sizes",
]
