"""Batch layouts of the hot step that leave every device's rows on that device under SPMD.

Under XLA SPMD the batch axis of every step input is split into S contiguous blocks, one per device
(``runtime.batch_shards``; S = 1 elsewhere). Two things the step does along that axis would move rows between devices
if written plainly:

- ``x.chunk(A)`` for gradient accumulation: micro-batch j would be rows j·B/A .. (j+1)·B/A - 1, the blocks of S/A
  devices only, which the partitioner then respreads over all S;
- ``cat([fakes, reals])``, D's one forward over both: the fakes would land on the first half of the devices.

Measured on XLA:CPU (tests/xla/checks.py ``step_spmd``: BigGAN-32 with SMYRF in G, ch 8, accumulation 2, global batch
8 on 2 devices): the D step had 18 all-gathers of activations (f32[4,32,32,32], ...), 6 all-to-alls and 8
collective-permutes, the G step 26 all-gathers. So here micro-batch j takes the j-th A-th of every block, and D's
input interleaves by block: block s of the 2B rows is [fakes of block s, reals of block s]. Both are reshapes plus a
slice or stack on an axis that is not sharded, so every device keeps its rows; with S = 1 they are exactly ``chunk``
and ``cat``. Neither changes what is computed: D has no BatchNorm, so its logit of an image depends on that image
alone (spectral norm's sigma is the weights'), and the one D forward per micro-batch keeps one SN power iteration, as
before; which images share a micro-batch (and so G's BatchNorm statistics) depends on S, and they are all independent
draws (fresh z, shuffled reals).

Shape legend: B batch; S blocks of the batch axis (devices); A micro-batches; b = B / (S·A) rows of a block's part.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["micro_batches", "pair_by_block", "unpair_by_block"]


def micro_batches(x: Optional[Tensor], accumulate: int, shards: int) -> list[Optional[Tensor]]:
    """``accumulate`` micro-batches of x (B, ...): number j is the j-th part of every one of the ``shards`` blocks,
    (B/A, ...), block order kept (None stays None). ``shards = 1``: ``x.chunk(accumulate)``."""
    if x is None:
        return [None] * accumulate
    total, rest = x.shape[0], x.shape[1:]
    if total % (shards * accumulate):
        raise ValueError(f"batch {total} does not split into {shards} blocks of {accumulate} micro-batches")
    blocks = x.reshape(shards, accumulate, total // (shards * accumulate), *rest)  # (S, A, b, ...)
    return [blocks[:, j].reshape(total // accumulate, *rest) for j in range(accumulate)]  # A x (S·b, ...)


def pair_by_block(first: Tensor, second: Tensor, shards: int) -> Tensor:
    """first, second (B, ...) -> (2B, ...) whose block s is [first's block s, second's block s].
    ``shards = 1``: ``cat([first, second])``."""
    rest = first.shape[1:]
    a = first.reshape(shards, -1, *rest)  # (S, B/S, ...)
    b = second.reshape(shards, -1, *rest)  # (S, B/S, ...)
    return torch.stack([a, b], dim=1).reshape(2 * first.shape[0], *rest)  # (S, 2, B/S, ...) -> (2B, ...)


def unpair_by_block(paired: Tensor, shards: int) -> tuple[Tensor, Tensor]:
    """The inverse of :func:`pair_by_block`: (2B, ...) -> (first (B, ...), second (B, ...))."""
    rest = paired.shape[1:]
    halves = paired.reshape(shards, 2, -1, *rest)  # (S, 2, B/S, ...)
    total = paired.shape[0] // 2
    return halves[:, 0].reshape(total, *rest), halves[:, 1].reshape(total, *rest)

