"""An infinite, deterministic, resumable stream of training batches for one rank.

Epoch ``e`` visits the images in the permutation drawn from ``(seed, e)``; rank ``r`` of ``world_size`` takes every
``world_size``-th entry starting at ``r`` (so shards change every epoch and never overlap), cut to whole batches
(fixed shapes, which XLA wants). The x-flip of each visit is drawn from the same ``(seed, e)`` generator, so a batch
depends only on ``(seed, epoch, position, rank, world_size)``: saving ``(epoch, position)`` is enough to resume
bit-identically. Batches index the uint8 memmap directly; there is no DataLoader and no per-step JPEG decode.

A batch is a :class:`HostBatch` of host tensors: the uint8 images, the flip mask and the labels. Turning pixels into
model input (``x / 127.5 - 1`` and the flip) is :func:`biggan.data.model_input.model_input`, which runs on the device
after the 4x smaller uint8 copy (the runtime's loader calls it). With ``labels`` (one class index per image, for
``conditioning: class``) the labels are those of the same indices, so they follow the order, the shards and a resume
exactly as the images do.

A prefetching loader reads ahead on a :meth:`BatchStream.fork` in another thread while this stream stays the cursor of
the batches the step has consumed (:meth:`BatchStream.skip`): its :meth:`state_dict` is what a checkpoint saves.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Protocol

import numpy as np
import torch

from biggan.errors import DataError

__all__ = ["BatchStream", "HostBatch", "ImageSource"]


class ImageSource(Protocol):
    def __len__(self) -> int: ...
    def get_batch(self, indices: np.ndarray) -> torch.Tensor: ...  # uint8 (B, 3, res, res)


class HostBatch(NamedTuple):
    """One batch on the host, before the device: what ``model_input`` and the labels are made from."""

    images: torch.Tensor  # uint8 (B, 3, res, res)
    flip: Optional[torch.Tensor]  # bool (B,): mirror image i along its width; None without data.xflip
    labels: Optional[torch.Tensor]  # int64 (B,); None for an unlabelled stream


class BatchStream:
    """``next(stream)`` -> :class:`HostBatch` (uint8 images, flip mask, labels) on the CPU, forever."""

    def __init__(self, dataset: ImageSource, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 xflip: bool = False, labels: Optional[np.ndarray] = None) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if labels is not None and len(labels) != len(dataset):
            raise ValueError(f"{len(labels)} labels for {len(dataset)} images")
        self.labels = labels  # (N,) int64 or None
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.xflip = xflip
        self.shard_size = len(dataset) // world_size  # equal shards: the remainder sits out this epoch
        self.batches_per_epoch = self.shard_size // batch_size
        if self.batches_per_epoch == 0:
            raise DataError(f"dataset has {len(dataset)} images, fewer than one batch of {batch_size} per rank "
                            f"({world_size} ranks); lower train.batch_size or use more images")
        self.epoch = 0
        self.position = 0  # batches already taken in this epoch
        self._plan_epoch = -1

    def _plan(self) -> None:
        """This rank's image order and flips for the current epoch."""
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.dataset))
        flips = rng.random(len(self.dataset)) < 0.5
        self._indices = order[self.rank::self.world_size][:self.shard_size]  # (shard,)
        self._flips = flips[self.rank::self.world_size][:self.shard_size]  # (shard,)
        self._plan_epoch = self.epoch

    def __iter__(self) -> BatchStream:
        return self

    def _advance(self) -> slice:
        """Step the cursor one batch (into the next epoch when this one is used up); the batch's span in the plan."""
        if self.position >= self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
        span = slice(self.position * self.batch_size, (self.position + 1) * self.batch_size)
        self.position += 1
        return span

    def __next__(self) -> HostBatch:
        span = self._advance()
        if self._plan_epoch != self.epoch:
            self._plan()
        indices = self._indices[span]  # (B,)
        images = self.dataset.get_batch(indices)  # (B, 3, res, res) uint8
        flip = torch.from_numpy(self._flips[span].copy()) if self.xflip else None  # (B,) bool
        labels = None if self.labels is None else torch.from_numpy(self.labels[indices])  # (B,) int64
        return HostBatch(images, flip, labels)

    def skip(self) -> None:
        """Move past one batch without reading it (the consumed cursor of a prefetching loader)."""
        self._advance()

    def fork(self) -> BatchStream:
        """An independent stream at this one's place: the same batches from here on (a loader's read-ahead copy)."""
        stream = BatchStream(self.dataset, self.batch_size, self.seed, self.rank, self.world_size, self.xflip,
                             self.labels)
        stream.epoch, stream.position = self.epoch, self.position
        return stream

    def reseeded(self, seed: int) -> BatchStream:
        """This stream with another data-order seed, at the same epoch and position (a divergence rollback's retry)."""
        if seed == self.seed:
            return self
        stream = self.fork()
        stream.seed = seed
        return stream

    def state_dict(self) -> dict[str, Any]:
        """Plain ints only (checkpoints are loaded with ``weights_only``)."""
        return {"epoch": self.epoch, "position": self.position, "num_images": len(self.dataset),
                "batch_size": self.batch_size, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where the saved stream stopped; DataError if the dataset or batch layout changed."""
        now = {"num_images": len(self.dataset), "batch_size": self.batch_size, "world_size": self.world_size}
        changed = {k: (state.get(k), v) for k, v in now.items() if state.get(k) != v}
        if changed:
            detail = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
            raise DataError(f"cannot resume the data stream: {detail}; resume with the original dataset and batch "
                            "layout, or start a new run")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
