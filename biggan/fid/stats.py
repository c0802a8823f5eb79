"""Streaming float64 feature statistics, the Fréchet distance, and their ``.npz`` file format.

Statistics are kept as Σx, Σxxᵀ and n in float64 on the metric device (the GPU on cuda: no feature leaves it until
the packed sums are reduced there; the host on cpu/xla, where float64 is slow on the device), so they stream (no
feature matrix held), merge across processes by summing, and give the same mean and unbiased covariance as ``np.cov`` in pytorch-fid. The distance is
pytorch-fid's own ``calculate_frechet_distance`` (scipy ``sqrtm`` in float64), not a hand-written matrix square root:
BigGAN-PyTorch's fp32 Newton–Schulz sqrt gives NaN at times (#49).

Files are pytorch-fid compatible (``mu``, ``sigma``) plus ``n``, ``dims`` and ``extractor`` so that a reference made
with another network, depth or resize is detected instead of silently compared.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from biggan.errors import DataError
from biggan.fid.dependency import pytorch_fid_module

__all__ = ["FeatureStats", "RefStats", "frechet_distance", "save_stats", "load_stats"]


class FeatureStats:
    """Running Σx, Σxxᵀ and count of ``dims``-dimensional features, in float64 on ``device``.

    ``n`` is a Python int (known from shapes: no device read); the sums stay on ``device`` until :meth:`mean_cov`.
    """

    def __init__(self, dims: int, device: torch.device | str = "cpu") -> None:
        self.dims = dims
        self.device = torch.device(device)
        self.n = 0
        self.sum = torch.zeros(dims, dtype=torch.float64, device=self.device)
        self.sum_outer = torch.zeros(dims, dims, dtype=torch.float64, device=self.device)

    def update(self, features: torch.Tensor) -> None:
        """Add a ``(B, dims)`` batch of features (any dtype; moved to ``device`` if elsewhere)."""
        x = features.detach().to(self.device, torch.float64)  # (B, dims)
        if x.dim() != 2 or x.shape[1] != self.dims:
            raise ValueError(f"expected features of shape (B, {self.dims}), got {tuple(x.shape)}")
        self.n += x.shape[0]
        self.sum += x.sum(dim=0)
        self.sum_outer += x.T @ x  # (dims, dims)

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add another process's statistics in place (sums are exact to merge)."""
        if other.dims != self.dims:
            raise ValueError(f"cannot merge stats of {other.dims} dims into {self.dims} dims")
        self.n += other.n
        self.sum += other.sum.to(self.device)
        self.sum_outer += other.sum_outer.to(self.device)
        return self

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``(dims,)`` and unbiased covariance ``(dims, dims)`` (``np.cov`` convention, ddof=1), float64 numpy
        arrays on the host (the one copy off the device: scipy's sqrtm takes them from here)."""
        if self.n < 2:
            raise ValueError(f"need at least 2 samples for a covariance, have {self.n}")
        mu = self.sum / self.n
        cov = (self.sum_outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return mu.cpu().numpy(), cov.cpu().numpy()


@dataclass
class RefStats:
    """Reference statistics loaded from a file, with the identity of what produced them."""

    mu: np.ndarray  # (dims,)
    sigma: np.ndarray  # (dims, dims)
    n: int  # number of images (0 if unknown: a plain pytorch-fid file)
    extractor: str  # extractor identity ("" if unknown)
    path: Path


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½), via pytorch-fid (scipy sqrtm in float64, real part)."""
    calculate_frechet_distance = pytorch_fid_module("fid_score").calculate_frechet_distance
    return float(calculate_frechet_distance(np.asarray(mu1, np.float64), np.asarray(sigma1, np.float64),
                                            np.asarray(mu2, np.float64), np.asarray(sigma2, np.float64)))


def save_stats(path: Path, stats: FeatureStats, extractor: str) -> Path:
    """Write ``mu``/``sigma`` (+ n, dims, extractor) atomically: temp file, fsync, rename."""
    mu, sigma = stats.mean_cov()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, mu=mu, sigma=sigma, n=np.int64(stats.n), dims=np.int64(stats.dims), extractor=np.str_(extractor))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_stats(path: str | Path) -> RefStats:
    """Read a statistics file (ours or pytorch-fid's ``--save-stats``); DataError if missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"FID statistics file {path} not found; "
                        f"compute it with `python -m biggan.fid stats IMAGES {path}`")
    try:
        with np.load(path) as f:
            mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
            n = int(f["n"]) if "n" in f else 0
            extractor = str(f["extractor"]) if "extractor" in f else ""
    except Exception as err:
        raise DataError(f"FID statistics file {path} is unreadable ({type(err).__name__}); "
                        "delete and recompute it") from err
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise DataError(f"FID statistics file {path} has mu {mu.shape} and sigma {sigma.shape}; "
                        "delete and recompute it")
    return RefStats(mu=mu, sigma=sigma, n=n, extractor=extractor, path=path)
