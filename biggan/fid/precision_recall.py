"""Improved precision and recall (Kynkäänniemi, Karras, Laine, Lehtinen, Aila, NeurIPS 2019), from the paper.

Each set of features approximates its manifold by the union of balls around its points, each ball's radius the
distance to that point's k-th nearest neighbour in the same set (k = 3, the paper's choice). A feature is *in* a
manifold when it falls inside at least one ball:

    precision = fraction of fakes inside the real manifold      (how many fakes look real: fidelity)
    recall    = fraction of reals inside the fake manifold      (how much of the real variety G covers: diversity)

FID mixes the two into one number; these separate them (a collapsed G has high precision and low recall). Distances
are Euclidean in float64 via the matrix-product form (|a|² + |b|² − 2ab: 20x faster than the direct form on a CPU,
measured at 512 × 4000 × 2048, and exact to ~1e-7 at Inception feature norms in float64), a block of rows at a time
(``block`` × n distances in memory, never n × n); the fake-to-real block serves precision and recall alike, so three
distance matrices are computed (real-real and fake-fake for the radii, fake-real once).

Shape legend: n, m feature counts, d feature size.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["K_NEAREST", "knn_radii", "precision_recall"]

K_NEAREST = 3  # the paper's neighbourhood size
BLOCK = 1024  # rows of a distance matrix held at once (1024 × 10k float64 = 82 MB)


def _distances(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances (|a|, |b|) between the rows of ``a`` and ``b`` (matrix-product form)."""
    return torch.cdist(a, b, compute_mode="use_mm_for_euclid_dist")


def knn_radii(points: Tensor, k: int = K_NEAREST, block: int = BLOCK) -> Tensor:
    """Distance from each of ``points`` (n, d) to its k-th nearest *other* point: (n,)."""
    if points.shape[0] <= k:
        raise ValueError(f"a k={k} neighbourhood needs more than {k} points, got {points.shape[0]}")
    radii = []
    for rows in points.split(block):
        dist = _distances(rows, points)  # (block, n); each row's own point (distance ~0) is the 1st smallest
        radii.append(dist.kthvalue(k + 1, dim=1).values)  # (block,)
    return torch.cat(radii)


def precision_recall(real: Tensor, fake: Tensor, k: int = K_NEAREST, device: torch.device | str = "cpu",
                     block: int = BLOCK) -> tuple[float, float]:
    """(precision, recall) of ``fake`` (m, d) against ``real`` (n, d), in float64 on ``device``."""
    real = real.to(device, torch.float64)  # (n, d)
    fake = fake.to(device, torch.float64)  # (m, d)
    real_radii, fake_radii = knn_radii(real, k, block), knn_radii(fake, k, block)  # (n,), (m,)
    fake_inside = []  # per fake: inside some real ball (precision)
    real_inside = torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)  # per real: inside a fake ball
    for rows, radii in zip(fake.split(block), fake_radii.split(block)):
        dist = _distances(rows, real)  # (block, n)
        fake_inside.append((dist <= real_radii[None, :]).any(dim=1))  # (block,)
        real_inside |= (dist <= radii[:, None]).any(dim=0)  # (n,)
    precision = torch.cat(fake_inside).double().mean()
    return float(precision), float(real_inside.double().mean())
