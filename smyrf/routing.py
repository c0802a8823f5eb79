"""Routing tokens into each round's sorted order and back: the gathers and scatters of ``smyrf.fused``.

One permutation ``perm`` (H, B, N) (sorted position -> original index, per round and row), two equivalent forms:

- ``"flat"``: batch x tokens flattened into one row axis, ``index_select`` / ``index_copy_`` on it. Used on CPU and
  CUDA, where every process holds its own batch (DDP): on CPU it is the faster form (fwd+bwd at G128@128, 1 thread,
  CPU time: 0.25 s flat, 0.31 s batched).
- ``"batched"``: the batch stays axis 0; ``torch.gather`` along the token axis with per-row indices expanded over the
  features, rounds folded into the token axis; the way back gathers with the inverse permutation (one integer
  scatter per call) instead of scattering floats. Used on XLA: under SPMD with the batch sharded, the partitioner sees
  the batch axis as parallel and every device routes only its own rows. Measured on XLA:CPU, B 4, Nq 1024, Nk 256,
  H 2, fwd+bwd: on 2 SPMD devices (tests/xla/checks.py ``smyrf_spmd``) the flat form gave 7 all-gathers of the
  indices and 6 all-reduces of whole-batch activations, advanced indexing ``x[b, idx]`` 13 all-gathers, this form
  none; on one device its steady step took 0.25 s against 0.29 s flat (0.35 s when it scattered floats back).

Both give the same layouts (tested equal), so the block kernels and the merges do not know which one ran:

- ``sort(x, t0, t1)``: x (B, N, e) -> (R, N, e) with R = (t1 - t0) * B, every row one round's sorted tokens of one
  batch row (round-major for "flat", batch-major for "batched");
- ``unsort(s, t0, t1)``: s (R, N, e) in that row order -> (hc, B, N, e) in original token order.

Shape legend: H rounds, hc rounds of a chunk; B rows; N tokens; e features; R = hc * B block rows.
"""

from __future__ import annotations

from typing import Literal, Union

import torch
from torch import Tensor

__all__ = ["Routing", "FlatRoute", "BatchedRoute", "make_route", "default_routing"]

Routing = Literal["flat", "batched"]


def default_routing(device: torch.device) -> Routing:
    """"batched" on XLA (SPMD shards the batch axis, see the module docstring), "flat" elsewhere (faster eager)."""
    return "batched" if device.type == "xla" else "flat"


class FlatRoute:
    """index_select / index_copy_ on x.reshape(B*N, e); static shapes."""

    def __init__(self, perm: Tensor) -> None:
        _, b, n = perm.shape
        offsets = torch.arange(b, device=perm.device).unsqueeze(-1) * n  # (B, 1)
        self.index = (perm + offsets).flatten(1)  # (H, B*N) rows of x.reshape(B*N, e)
        self.b, self.n = b, n

    def sort(self, x: Tensor, t0: int, t1: int) -> Tensor:
        rows = x.reshape(self.b * self.n, x.shape[-1])  # (B*N, e)
        return rows.index_select(0, self.index[t0:t1].reshape(-1)).view(-1, self.n, x.shape[-1])  # (hc*B, N, e)

    def unsort(self, s: Tensor, t0: int, t1: int) -> Tensor:
        e, rows = s.shape[-1], self.b * self.n
        offsets = torch.arange(t1 - t0, device=s.device).unsqueeze(-1) * rows  # (hc, 1): round r -> block r
        dest = (self.index[t0:t1] + offsets).reshape(-1)  # (hc*B*N,), unique
        out = torch.empty(dest.numel(), e, dtype=s.dtype, device=s.device)
        return out.index_copy_(0, dest, s.reshape(-1, e)).view(t1 - t0, self.b, self.n, e)  # (hc, B, N, e)


class BatchedRoute:
    """gather along the token axis, the batch kept as axis 0; unsort by the inverse permutation; static shapes."""

    def __init__(self, perm: Tensor) -> None:
        self.perm = perm  # (H, B, N)
        _, self.b, self.n = perm.shape
        positions = torch.arange(self.n, device=perm.device).expand_as(perm)
        self.inverse = torch.empty_like(perm).scatter_(-1, perm, positions)  # (H, B, N): original -> sorted position

    def sort(self, x: Tensor, t0: int, t1: int) -> Tensor:
        e = x.shape[-1]
        index = self.perm[t0:t1].transpose(0, 1).reshape(self.b, -1)  # (B, hc*N): round r's sorted order in block r
        return x.gather(1, index.unsqueeze(-1).expand(-1, -1, e)).view(-1, self.n, e)  # (B*hc, N, e)

    def unsort(self, s: Tensor, t0: int, t1: int) -> Tensor:
        hc, e = t1 - t0, s.shape[-1]
        offsets = torch.arange(hc, device=s.device).view(hc, 1, 1) * self.n  # (hc, 1, 1): round r's block of s
        index = (self.inverse[t0:t1] + offsets).transpose(0, 1).reshape(self.b, -1)  # (B, hc*N)
        out = s.reshape(self.b, hc * self.n, e).gather(1, index.unsqueeze(-1).expand(-1, -1, e))  # original order
        return out.view(self.b, hc, self.n, e).transpose(0, 1)  # (hc, B, N, e)


def make_route(perm: Tensor, routing: Routing) -> Union[FlatRoute, BatchedRoute]:
    if routing == "flat":
        return FlatRoute(perm)
    if routing == "batched":
        return BatchedRoute(perm)
    raise ValueError(f"routing must be 'flat' or 'batched', got {routing!r}")
