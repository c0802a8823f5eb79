"""Seed-per-image latents, batched generation and image grids (shared by the tick, FID and ``sample.py``).

Image *i* depends only on seed *i*: each seed gets its own CPU ``torch.Generator`` (EDM's idea), so a seed gives the same
latent at any batch size and on any device. Generation runs G in eval mode (BN running statistics, fixed SMYRF
projection seeds, no SN power iteration), so samples never change training state or consume training randomness.

Truncation here is BigGAN-PyTorch's: z ~ N(0, I) scaled by ``truncation`` (a smaller standard deviation). It is not
a truncated normal and does not touch BN statistics.

Shape legend: B batch; h×w spatial size.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn
from torchvision.utils import make_grid, save_image

from biggan.errors import UserError

__all__ = ["parse_seeds", "latents_for_seeds", "generate", "to_uint8", "image_grid", "save_grid", "save_image_files"]


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


@torch.no_grad()
def generate(G: nn.Module, z: Tensor, batch_size: int, device: torch.device, y: Optional[Tensor] = None) -> Tensor:
    """G(z) in eval mode, ``batch_size`` rows at a time; (B, 3, h, w) float CPU tensor in [-1, 1]. Restores G's mode."""
    was_training = G.training
    G.eval()
    try:
        out = []
        for start in range(0, z.shape[0], batch_size):
            z_b = z[start : start + batch_size].to(device)
            y_b = None if y is None else y[start : start + batch_size].to(device)
            out.append(G(z_b, y_b).float().cpu())
        return torch.cat(out)  # (B, 3, h, w)
    finally:
        G.train(was_training)


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] floats -> uint8 as if saved to PNG: x·127.5 + 128, clamped, truncated (the FID convention)."""
    return (x * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def image_grid(x: Tensor, nrow: Optional[int] = None) -> Tensor:
    """(B, 3, h, w) in [-1, 1] -> one (3, H, W) grid in [0, 1]; square-ish unless ``nrow`` (images per row) is given."""
    nrow = nrow or max(1, math.ceil(math.sqrt(x.shape[0])))
    return make_grid(to_uint8(x).float() / 255.0, nrow=nrow, padding=2, pad_value=1.0)


def save_grid(x: Tensor, path: str | Path, nrow: Optional[int] = None) -> Tensor:
    """Save an image grid as PNG and return it (for TensorBoard)."""
    grid = image_grid(x, nrow)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, str(path))
    return grid


def save_image_files(x: Tensor, outdir: str | Path, names: list[str]) -> None:
    """One PNG per image: ``<outdir>/<name>.png`` (uint8-quantised exactly as the grids and FID fakes)."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    for image, name in zip(x, names):
        save_image(to_uint8(image).float() / 255.0, str(out / f"{name}.png"))
