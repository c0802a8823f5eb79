"""Seed-per-image latents: image *i* depends only on seed *i* (EDM's idea), at any batch size and on any device.

Each seed gets its own CPU ``torch.Generator``, so a seed gives the same latent whatever else is drawn. Truncation
here is BigGAN-PyTorch's: z ~ N(0, I) scaled by ``truncation`` (a smaller standard deviation). It is not a truncated
normal and does not touch BN statistics.

Shape legend: B batch (one row per seed); K seeds.
"""

from __future__ import annotations

import torch
from torch import Tensor

from biggan.errors import ConfigError, UserError

__all__ = ["parse_seeds", "latents_for_seeds", "interpolation_latents"]


def parse_seeds(text: str) -> list[int]:
    """``"0-63"``, ``"1,5,9"`` or ``"0-3,10"`` -> list of ints (ranges inclusive)."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            lo, sep, hi = part.partition("-")
            first, last = int(lo), int(hi) if sep else int(lo)
            if first < 0 or last < first:
                raise ValueError
            seeds.extend(range(first, last + 1))
    except ValueError:
        raise UserError(f"--seeds {text!r} is not a list of seeds >= 0; use e.g. 0-63 or 1,5,9 or 0-3,10") from None
    return seeds


def latents_for_seeds(seeds: list[int], dim_z: int, truncation: float = 1.0) -> Tensor:
    """(B, dim_z) latents on the CPU; row i is ``truncation * N(0, I)`` drawn from a generator seeded with seeds[i]."""
    rows = [torch.randn(dim_z, generator=torch.Generator().manual_seed(int(seed))) for seed in seeds]
    return torch.stack(rows) * truncation  # (B, dim_z)


def interpolation_latents(z: Tensor, steps: int) -> Tensor:
    """Linear paths between consecutive rows of ``z`` (K, dim_z): ((K-1)·steps, dim_z), endpoints included."""
    if z.shape[0] < 2 or steps < 2:
        raise ConfigError("--interpolate needs at least two seeds and --steps >= 2")
    t = torch.linspace(0, 1, steps)[None, :, None]  # (1, steps, 1)
    paths = z[:-1, None, :] * (1 - t) + z[1:, None, :] * t  # (K-1, steps, dim_z)
    return paths.reshape(-1, z.shape[1])  # ((K-1)·steps, dim_z)
