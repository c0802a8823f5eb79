"""FID of a generator (or of any uint8 image stream) against reference statistics.

Fakes are quantised to uint8 exactly as if saved to PNG (``x·127.5 + 128``, clamped, truncated), never JPEG, then go
through the same extractor path as the real images. Statistics stream in float64 on the extractor's
``feature_device`` (the run's metric device); with several processes each one embeds its own share and ``reduce`` sums
the packed statistics there (NCCL reduces GPU tensors only) before the distance is taken on the host.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from biggan.errors import ConfigError, DataError
from biggan.fid.config import FIDConfig
from biggan.fid.extractor import FIDExtractor, load_extractor
from biggan.fid.stats import FeatureStats, RefStats, frechet_distance, load_stats, save_stats
# Fakes are quantised exactly as sample.py and the training grids save PNGs (x·127.5 + 128, clamped, truncated):
# one definition, so FID always sees what a user would save.
from biggan.images import to_uint8 as quantize_uint8

__all__ = [
    "quantize_uint8",
    "stats_of_batches",
    "fid_of_generator",
    "ensure_reference_stats",
    "reference_stats_current",
    "FIDEvaluator",
    "build_fid_evaluator",
]


class ImageArray(Protocol):
    """What reference statistics need from a dataset (``biggan.data`` prepared/synthetic/folder datasets)."""

    def __len__(self) -> int: ...
    def get_batch(self, indices: np.ndarray) -> torch.Tensor: ...  # uint8 (B, 3, res, res)
    def reference_stats_path(self, dims: int) -> Path | None: ...


def _device(extractor: torch.nn.Module) -> torch.device:
    return next(extractor.parameters()).device


def _feature_device(extractor: torch.nn.Module) -> torch.device:
    """Where the extractor's features leave (:class:`FIDExtractor.feature_device`); the host for stand-ins."""
    return torch.device(getattr(extractor, "feature_device", "cpu"))


def stats_of_batches(batches: Iterable[torch.Tensor], extractor: FIDExtractor, total: int | None = None,
                     desc: str | None = None) -> FeatureStats:
    """Stream uint8 ``(B, 3, h, w)`` batches through the extractor into float64 statistics.

    A progress bar is shown when ``desc`` is given and stderr is a terminal (``disable=None``), so logs stay clean.
    """
    stats = FeatureStats(extractor.dims, _feature_device(extractor))
    device = _device(extractor)
    bar = tqdm(total=total, desc=desc, unit="img", disable=True if desc is None else None)
    for images in batches:
        stats.update(extractor(images.to(device)))  # a no-op move for fakes made on the extractor's device
        bar.update(images.shape[0])
    bar.close()
    return stats


def _check_compatible(ref: RefStats, extractor: FIDExtractor) -> None:
    """Refuse a reference made with another depth or another extractor file: such FIDs are not comparable."""
    if ref.mu.shape[0] != extractor.dims:
        raise DataError(f"reference stats {ref.path} have {ref.mu.shape[0]} dims but fid.dims is {extractor.dims}; "
                        f"point fid.ref_stats at {extractor.dims}-dim stats or delete the file to recompute")
    if ref.extractor and ref.extractor != extractor.identity:
        raise DataError(f"reference stats {ref.path} were made by {ref.extractor}, not {extractor.identity}; "
                        "delete the file to recompute it with the current weights")


def fid_of_generator(sample_uint8: Callable[[int], torch.Tensor], num_samples: int, batch_size: int,
                     extractor: FIDExtractor, ref_stats: RefStats,
                     reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """FID of ``num_samples`` fakes drawn as ``sample_uint8(n) -> uint8 (n, 3, h, w)`` against ``ref_stats``.

    Args:
        sample_uint8: draws n fakes (G_ema in eval mode with a fixed SMYRF seed, quantised with quantize_uint8).
        num_samples: fakes drawn by this process; with ``reduce`` pass this process's share of the total.
        batch_size: fakes drawn and embedded at once (fixed shapes; the last batch is cut, not resized).
        extractor: from :func:`load_extractor`.
        ref_stats: from :func:`load_stats` / :func:`ensure_reference_stats`.
        reduce: sums a float64 tensor on the extractor's ``feature_device`` over processes (all-reduce) and returns
            it; None for one process.
    """
    _check_compatible(ref_stats, extractor)

    def batches() -> Iterable[torch.Tensor]:
        left = num_samples
        while left > 0:
            images = sample_uint8(batch_size)  # (batch_size, 3, h, w)
            yield images[:left]
            left -= batch_size

    stats = stats_of_batches(batches(), extractor)
    if reduce is not None:
        count = torch.tensor([float(stats.n)], dtype=torch.float64, device=stats.device)  # (1,)
        packed = torch.cat([count, stats.sum, stats.sum_outer.flatten()])  # (1 + dims + dims²,) on stats.device
        packed = reduce(packed).to(stats.device, torch.float64)  # summed over processes
        dims = stats.dims
        stats.n = int(round(float(packed[0])))  # the evaluation's one count read (a host sync, outside the step)
        stats.sum = packed[1:1 + dims].clone()
        stats.sum_outer = packed[1 + dims:].reshape(dims, dims).clone()  # (dims, dims)
    mu, sigma = stats.mean_cov()
    return frechet_distance(mu, sigma, ref_stats.mu, ref_stats.sigma)


def reference_stats_current(path: Path | None, identity: str, num_images: int) -> bool:
    """True when ``path`` holds statistics of ``num_images`` images made by the extractor ``identity`` (no rework)."""
    if path is None or not path.is_file():
        return False
    ref = load_stats(path)
    return ref.extractor == identity and ref.n == num_images


def ensure_reference_stats(dataset: ImageArray, extractor: FIDExtractor, batch_size: int) -> Path:
    """Statistics of every training image (no flips), cached next to the dataset; recomputed if stale.

    Call it on one process (the main one) and let the others wait; the file is written atomically.
    """
    path = dataset.reference_stats_path(extractor.dims)
    if path is None:
        raise ConfigError("this dataset kind has no place for reference statistics; set fid.ref_stats to a file "
                          "made with `python -m biggan.fid stats IMAGES OUT.npz`")
    if reference_stats_current(path, extractor.identity, len(dataset)):
        return path
    n = len(dataset)
    batches = (dataset.get_batch(np.arange(i, min(i + batch_size, n))) for i in range(0, n, batch_size))
    stats = stats_of_batches(batches, extractor, total=n, desc=f"FID reference stats ({extractor.dims} dims)")
    return save_stats(path, stats, extractor.identity)


@dataclass
class FIDEvaluator:
    """Everything the training loop needs for one named FID: extractor, reference and sizes."""

    name: str  # e.g. fid10k, fid1k_d192
    extractor: FIDExtractor
    ref: RefStats
    num_samples: int
    batch_size: int

    @property
    def identity(self) -> dict[str, Any]:
        """Written next to every value (metrics.jsonl): which extractor and which reference produced it."""
        return {"extractor": self.extractor.identity, "ref_stats": str(self.ref.path), "ref_n": self.ref.n}

    def __call__(self, sample_uint8: Callable[[int], torch.Tensor],
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, world_size: int = 1) -> float:
        """FID of ``num_samples`` fakes in total, split evenly over ``world_size`` processes."""
        share = -(-self.num_samples // world_size)  # ceil: every process draws the same fixed-shape count
        return fid_of_generator(sample_uint8, share, self.batch_size, self.extractor, self.ref, reduce)


def build_fid_evaluator(cfg: FIDConfig, dataset: ImageArray | None, device: torch.device | str,
                        compute_missing: bool = True, extractor: FIDExtractor | None = None) -> FIDEvaluator:
    """Load the extractor (WeightsError if absent; or take ``extractor``, loaded by the caller from the same config)
    and the reference: ``cfg.ref_stats`` or the dataset's own.

    With ``compute_missing`` (main process), the dataset's reference statistics are computed if absent or stale.
    """
    if extractor is None:
        extractor = load_extractor(cfg.weights_path or None, device, cfg.dims)
    if cfg.ref_stats:
        path = Path(cfg.ref_stats)
    elif dataset is None:
        raise ConfigError("fid.ref_stats is empty and there is no dataset to compute reference statistics from")
    elif compute_missing:
        path = ensure_reference_stats(dataset, extractor, cfg.batch_size)
    else:
        path = dataset.reference_stats_path(cfg.dims)
        if path is None:
            raise ConfigError("set fid.ref_stats: this dataset kind keeps no reference statistics")
    ref = load_stats(path)
    _check_compatible(ref, extractor)
    return FIDEvaluator(cfg.name, extractor, ref, cfg.num_samples, cfg.batch_size)
