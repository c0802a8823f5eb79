"""Seed-per-image latents: image *i* depends only on seed *i* (EDM's idea), at any batch size and on any device.

Each seed gets its own CPU ``torch.Generator``, so a seed gives the same latent whatever else is drawn. Two ways to
trade variety for fidelity, which compose (neither touches BN statistics):

- ``truncate_at`` t: the BigGAN paper's truncation trick, z from N(0, I) truncated to [-t, t] (values outside are
  resampled; drawn here by inverse-CDF sampling, ``torch.nn.init.trunc_normal_``, which gives exactly that
  distribution in one draw per entry). The TF-Hub BigGAN notebooks draw z as a normal truncated at 2 times their
  ``truncation`` value: ``truncate_at=2, z_scale=0.5`` draws their z for ``truncation=0.5`` (their modules also use
  that value to pick BN statistics, which no BigGAN-PyTorch checkpoint has).
- ``z_scale`` s: z times s, i.e. N(0, s²·I). This is BigGAN-PyTorch's "truncation" (its ``z_var``, really a standard
  deviation): a narrower normal, not a truncated one.

Shape legend: B batch (one row per seed); K seeds.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from biggan.errors import ConfigError, UserError

__all__ = ["parse_seeds", "latents_for_seeds", "describe_latents", "interpolation_latents"]


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


def _normal(seed: int, dim_z: int, truncate_at: Optional[float]) -> Tensor:
    gen = torch.Generator().manual_seed(int(seed))
    if truncate_at is None:
        return torch.randn(dim_z, generator=gen)
    z = torch.empty(dim_z, dtype=torch.float64)  # float64: the inverse CDF stays exact near +-t
    return torch.nn.init.trunc_normal_(z, a=-truncate_at, b=truncate_at, generator=gen).float()


def latents_for_seeds(seeds: list[int], dim_z: int, z_scale: float = 1.0,
                      truncate_at: Optional[float] = None) -> Tensor:
    """(B, dim_z) latents on the CPU; row i is ``z_scale`` times N(0, I) (truncated to [-t, t] when ``truncate_at``
    is t) drawn from a generator seeded with seeds[i]."""
    if truncate_at is not None and truncate_at <= 0:
        raise ConfigError(f"the truncation threshold must be > 0, got {truncate_at}")
    rows = [_normal(seed, dim_z, truncate_at) for seed in seeds]
    return torch.stack(rows) * z_scale  # (B, dim_z)


def describe_latents(z_scale: float, truncate_at: Optional[float]) -> str:
    """What z was drawn from, in words (image metadata, logs)."""
    base = "N(0, I)" if truncate_at is None else f"N(0, I) truncated to [-{truncate_at:g}, {truncate_at:g}] " \
                                                  "(truncation trick)"
    return base + ("" if z_scale == 1.0 else f" times {z_scale:g} (z scale)")


def interpolation_latents(z: Tensor, steps: int) -> Tensor:
    """Linear paths between consecutive rows of ``z`` (K, dim_z): ((K-1)·steps, dim_z), endpoints included."""
    if z.shape[0] < 2 or steps < 2:
        raise ConfigError("--interpolate needs at least two seeds and --steps >= 2")
    t = torch.linspace(0, 1, steps)[None, :, None]  # (1, steps, 1)
    paths = z[:-1, None, :] * (1 - t) + z[1:, None, :] * t  # (K-1, steps, dim_z)
    return paths.reshape(-1, z.shape[1])  # ((K-1)·steps, dim_z)
