"""Reference features for KID and precision/recall: a fixed random subset of the real images' Inception features.

FID needs only the reals' mean and covariance (``fid_stats_d<D>.npz``); KID and precision/recall need feature vectors.
Up to ``cap`` of them (``fid.ref_features``, 10k by default: the usual KID/PR protocol, 82 MB at 2048 dims) are kept
next to the statistics as ``<stats>.features.npz``: ``features`` float32 (n, dims) (the network's own precision, so
nothing is lost), ``indices`` (which images, sorted), ``n_total`` (images in the dataset) and ``extractor`` (identity,
as for the statistics). The subset is the first ``cap`` of a fixed-seed permutation of the dataset (all images when the
dataset is smaller), so it depends only on the dataset size and the cap.

When the statistics must be computed too, one Inception pass over the dataset yields both (:class:`FeatureTap` hands
each batch's features to a collector); when only the features are missing (a dataset prepared before KID/PR existed),
just the subset is embedded. Files are written atomically (temporary file, fsync, rename) and rejected when their
extractor, dataset size or subset differ from what the run would use.

Shape legend: B batch, n kept features, dims feature size.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from biggan.errors import ConfigError, DataError
from biggan.fid.evaluate import ImageArray, reference_stats_current, stats_of_batches
from biggan.fid.extractor import FIDExtractor
from biggan.fid.stats import save_stats

__all__ = ["FeatureTap", "KeepRows", "RefFeatures", "reference_features_path", "subset_indices", "save_features",
           "load_features", "features_current", "ensure_reference_features"]

SUBSET_SEED = 2019  # the subset of reals kept: a function of (dataset size, cap) only


class FeatureTap(nn.Module):
    """An extractor that also hands every batch of features to ``sink``: one Inception pass feeds FID, KID and PR."""

    def __init__(self, extractor: FIDExtractor, sink: Callable[[torch.Tensor], None]) -> None:
        super().__init__()
        self.extractor, self.sink = extractor, sink
        self.dims, self.identity = extractor.dims, extractor.identity
        self.feature_device = getattr(extractor, "feature_device", torch.device("cpu"))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.extractor(images)  # (B, dims)
        self.sink(features)
        return features


@dataclass
class RefFeatures:
    """A reference feature file's content."""

    features: torch.Tensor  # (n, dims) float32
    indices: np.ndarray  # (n,) dataset indices, sorted
    n_total: int  # images in the dataset they were drawn from
    extractor: str  # extractor identity
    path: Path


def reference_features_path(stats_path: Path) -> Path:
    """``fid_stats_d2048.npz`` -> ``fid_stats_d2048.features.npz`` (beside the statistics they go with)."""
    return Path(stats_path).with_suffix(".features.npz")


def subset_indices(n_total: int, cap: int) -> np.ndarray:
    """Sorted indices of the ``cap`` reals kept (all of them when ``cap >= n_total``)."""
    if cap >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(SUBSET_SEED).permutation(n_total)[:cap])


def save_features(path: Path, features: torch.Tensor, indices: np.ndarray, n_total: int, extractor: str) -> Path:
    """Write a reference feature file atomically: temporary file, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, features=features.to(torch.float32).numpy(), indices=np.asarray(indices, np.int64),
                 n_total=np.int64(n_total), extractor=np.str_(extractor))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_features(path: str | Path) -> RefFeatures:
    """Read a reference feature file; DataError naming the file and the fix if it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"KID/PR reference features {path} not found; make them with `python -m biggan.fid stats "
                        "IMAGES STATS.npz` (writes STATS.features.npz too) or set fid.extra_metrics=[]")
    try:
        with np.load(path) as f:
            features = torch.from_numpy(f["features"].astype(np.float32))
            indices, n_total, extractor = f["indices"].astype(np.int64), int(f["n_total"]), str(f["extractor"])
    except Exception as err:
        raise DataError(f"KID/PR reference features {path} are unreadable ({type(err).__name__}); "
                        "delete the file to recompute it") from err
    if features.dim() != 2 or indices.shape != (features.shape[0],):
        raise DataError(f"KID/PR reference features {path} hold features {tuple(features.shape)} for "
                        f"{indices.shape[0]} indices; delete the file to recompute it")
    return RefFeatures(features=features, indices=indices, n_total=n_total, extractor=extractor, path=path)


def features_current(path: Path, identity: str, n_total: int, cap: int) -> bool:
    """True when ``path`` holds the subset of ``cap`` of ``n_total`` images made by the extractor ``identity``."""
    if not path.is_file():
        return False
    ref = load_features(path)
    return (ref.extractor == identity and ref.n_total == n_total
            and np.array_equal(ref.indices, subset_indices(n_total, cap)))


def _batches(dataset: ImageArray, indices: np.ndarray, batch_size: int):
    return (dataset.get_batch(indices[i:i + batch_size]) for i in range(0, len(indices), batch_size))


class KeepRows:
    """A :class:`FeatureTap` sink that keeps, in float32, the rows of a stream of batches where ``mask`` is True."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask, self.offset, self.rows = torch.from_numpy(mask), 0, []

    def __call__(self, features: torch.Tensor) -> None:
        mask = self.mask[self.offset:self.offset + features.shape[0]]  # (B,)
        self.rows.append(features[mask.to(features.device)].to("cpu", torch.float32))  # (kept, dims)
        self.offset += features.shape[0]

    def features(self) -> torch.Tensor:
        return torch.cat(self.rows)  # (n_kept, dims)


def ensure_reference_features(dataset: ImageArray, extractor: FIDExtractor, batch_size: int, cap: int) -> Path:
    """The FID statistics and the KID/PR reference features of ``dataset``, computed if absent or stale; returns the
    features' path (the statistics sit beside them, at ``dataset.reference_stats_path``).

    Call it on one process (the main one) and let the others wait.
    """
    stats_path = dataset.reference_stats_path(extractor.dims)
    if stats_path is None:
        raise ConfigError("this dataset kind has no place for reference statistics; set fid.ref_stats to a file "
                          "made with `python -m biggan.fid stats IMAGES OUT.npz`")
    path, n = reference_features_path(stats_path), len(dataset)
    indices = subset_indices(n, cap)
    stats_ok = reference_stats_current(stats_path, extractor.identity, n)
    if stats_ok and features_current(path, extractor.identity, n, cap):
        return path
    if stats_ok:  # only the features are missing: embed just the subset
        keep = KeepRows(np.ones(len(indices), dtype=bool))
        stats_of_batches(_batches(dataset, indices, batch_size), FeatureTap(extractor, keep), total=len(indices),
                         desc=f"KID/PR reference features ({extractor.dims} dims)")
    else:  # one pass over every image: the statistics, and the subset's features on the way
        mask = np.zeros(n, dtype=bool)
        mask[indices] = True
        keep = KeepRows(mask)
        stats = stats_of_batches(_batches(dataset, np.arange(n), batch_size), FeatureTap(extractor, keep), total=n,
                                 desc=f"FID reference stats and KID/PR features ({extractor.dims} dims)")
        save_stats(stats_path, stats, extractor.identity)
    return save_features(path, keep.features(), indices, n, extractor.identity)
