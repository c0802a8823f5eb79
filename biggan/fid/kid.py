"""Kernel Inception Distance (Bińkowski, Sutherland, Arbel, Gretton, ICLR 2018), from the paper's definitions.

KID is the squared maximum mean discrepancy between real and fake features under the cubic polynomial kernel
``k(x, y) = (x·y / d + 1)³`` (d = feature size), estimated without bias:

    MMD²ᵤ = 1/(m(m−1)) Σ_{i≠j} k(xᵢ, xⱼ) + 1/(n(n−1)) Σ_{i≠j} k(yᵢ, yⱼ) − 2/(mn) Σ_{i,j} k(xᵢ, yⱼ)

Unlike FID it is unbiased at any sample count (its expectation is 0 when both sets come from the same distribution; a
single estimate can be slightly negative), so values at 500 and at 50k fakes estimate the same number. It is averaged
over random subsets of ``subset_size`` from each set, whose standard deviation is reported beside the mean (the
standard protocol: 100 subsets of 1000, as stylegan2-ada and torchmetrics). Subsets are drawn from a fixed-seed
generator of their own, so an evaluation never touches the training RNG and the same features give the same KID.
Arithmetic is float64 (the kernel means are O(1) and KID is their O(1e-3) difference).

Shape legend: m, n real/fake feature counts, d feature size.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["polynomial_kernel", "mmd2_unbiased", "kernel_inception_distance"]

SUBSET_SEED = 0  # subsets are drawn from their own generator: same features -> same KID, training RNG untouched


def polynomial_kernel(a: Tensor, b: Tensor) -> Tensor:
    """``(a bᵀ / d + 1)³`` for ``a`` (m, d), ``b`` (n, d): (m, n)."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: Tensor, y: Tensor) -> Tensor:
    """The unbiased MMD² estimate between ``x`` (m, d) and ``y`` (n, d) under :func:`polynomial_kernel` (a scalar)."""
    m, n = x.shape[0], y.shape[0]
    k_xx, k_yy = polynomial_kernel(x, x), polynomial_kernel(y, y)  # (m, m), (n, n)
    off_xx = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    off_yy = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return off_xx + off_yy - 2.0 * polynomial_kernel(x, y).mean()


def kernel_inception_distance(real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000,
                              device: torch.device | str = "cpu") -> tuple[float, float]:
    """KID mean and standard deviation over ``subsets`` random subsets of ``min(subset_size, m, n)`` from each set.

    Args:
        real: reference features (m, d); fake: generated features (n, d); any float dtype, computed in float64.
        subsets: number of subsets (1 with ``subset_size >= max(m, n)`` is the estimate on all features).
        subset_size: features per subset and set, without replacement inside a subset (capped at m and n).
        device: where the kernel matrices are computed (a float64-capable device: the host or a GPU).
    """
    size = min(subset_size, real.shape[0], fake.shape[0])
    if size < 2:
        raise ValueError(f"KID needs at least 2 features per set, got {real.shape[0]} real and {fake.shape[0]} fake")
    real = real.to(device, torch.float64)  # (m, d)
    fake = fake.to(device, torch.float64)  # (n, d)
    gen = torch.Generator().manual_seed(SUBSET_SEED)
    values = []
    for _ in range(subsets):
        r = torch.randperm(real.shape[0], generator=gen)[:size].to(device)  # (size,)
        f = torch.randperm(fake.shape[0], generator=gen)[:size].to(device)  # (size,)
        values.append(mmd2_unbiased(real[r], fake[f]))
    stacked = torch.stack(values).cpu()  # (subsets,)
    std = float(stacked.std(unbiased=False)) if subsets > 1 else 0.0  # spread of the subset estimates
    return float(stacked.mean()), std
