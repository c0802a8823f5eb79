"""Differentiable augmentation for D (DiffAugment, Zhao et al., NeurIPS 2020), implemented from the paper's definitions.

D sees ``T(x)`` for reals and fakes alike, with the same policy ``T`` in the D step and in the G step, and ``T`` is
differentiable, so G's gradient flows through it (augmenting only the reals would teach G to produce the augmentations;
augmenting only the D step would let D tell augmented reals from plain fakes). Each image draws its own parameters.
The three ops, on images in [-1, 1], applied in the order of the policy:

- ``color``: brightness ``x + b``, b ~ U(-0.5, 0.5); saturation ``(x - mean_c) · s + mean_c``, s ~ U(0, 2), mean over
  channels per pixel; contrast ``(x - mean) · c + mean``, c ~ U(0.5, 1.5), mean over the whole image.
- ``translation``: an integer shift of up to 1/8 of the image size in each direction (uniform in [-r, r],
  r = round(h/8)), zero padding.
- ``cutout``: a square of half the image size (round(h/2)) set to zero, centred uniformly over the image (it may be
  cut by the border).

Randomness is drawn on the host from the run's augmentation generator (``TrainingState.augment_rng``, saved in every
checkpoint), packed into one small float tensor per call and placed with the runtime's batch placement (sharded like
the images under SPMD). On the device everything is static-shaped arithmetic, comparisons and gathers: no
data-dependent shapes, no host reads, the same program for every draw (no recompilation on XLA). Parameters are never
drawn from the device's RNG, so the same seed gives the same augmentation on any device.

Shape legend: B batch, C channels, h×w spatial size, P packed parameters per image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Optional

import torch
from torch import Tensor

__all__ = ["OPS", "Op", "DiffAugment", "adjust_color", "translate", "cutout", "translation_shift", "cutout_size"]

Op = Literal["color", "translation", "cutout"]
OPS: tuple[str, ...] = ("color", "translation", "cutout")  # the paper's full policy, in its order
TRANSLATION_RATIO = 1 / 8  # paper: shifts of up to 1/8 of the image size
CUTOUT_RATIO = 1 / 2  # paper: a square of half the image size
_PARAMS = {"color": 3, "translation": 2, "cutout": 2}  # packed parameters per image and op


def _per_image(v: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1), to broadcast over an image batch."""
    return v[:, None, None, None]


def adjust_color(x: Tensor, brightness: Tensor, saturation: Tensor, contrast: Tensor) -> Tensor:
    """Brightness, then saturation, then contrast of ``x`` (B, C, h, w), each parameter (B,)."""
    x = x + _per_image(brightness)
    grey = x.mean(dim=1, keepdim=True)  # (B, 1, h, w)
    x = (x - grey) * _per_image(saturation) + grey
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return (x - mean) * _per_image(contrast) + mean


def translation_shift(size: int) -> int:
    """Largest shift (pixels) for an image side of ``size``: round(size / 8)."""
    return int(size * TRANSLATION_RATIO + 0.5)


def cutout_size(size: int) -> int:
    """Side of the cutout square for an image side of ``size``: round(size / 2)."""
    return int(size * CUTOUT_RATIO + 0.5)


def translate(x: Tensor, dy: Tensor, dx: Tensor) -> Tensor:
    """``out[b, :, i, j] = x[b, :, i - dy[b], j - dx[b]]``, zero where that falls outside; ``dy``/``dx`` (B,) integers.

    Two gathers with clamped indices and a validity mask: the same static shapes whatever the shifts.
    """
    B, C, h, w = x.shape
    rows = torch.arange(h, device=x.device)[None, :] - dy[:, None]  # (B, h) source row of each output row
    cols = torch.arange(w, device=x.device)[None, :] - dx[:, None]  # (B, w)
    row_ok = (rows >= 0) & (rows < h)  # (B, h)
    col_ok = (cols >= 0) & (cols < w)  # (B, w)
    rows = rows.clamp(0, h - 1)[:, None, :, None].expand(B, C, h, w)  # (B, C, h, w)
    cols = cols.clamp(0, w - 1)[:, None, None, :].expand(B, C, h, w)  # (B, C, h, w)
    out = x.gather(2, rows).gather(3, cols)  # (B, C, h, w)
    mask = row_ok[:, None, :, None] & col_ok[:, None, None, :]  # (B, 1, h, w)
    return out * mask.to(x.dtype)


def cutout(x: Tensor, cy: Tensor, cx: Tensor, size: int) -> Tensor:
    """Zero the ``size``×``size`` square whose rows are ``cy - size//2 .. cy - size//2 + size - 1`` (cols likewise).

    ``cy``/``cx`` (B,) integers; the square is cut by the border where it sticks out.
    """
    _, _, h, w = x.shape
    top, left = cy - size // 2, cx - size // 2  # (B,)
    i = torch.arange(h, device=x.device)[None, :]  # (1, h)
    j = torch.arange(w, device=x.device)[None, :]  # (1, w)
    in_rows = (i >= top[:, None]) & (i < top[:, None] + size)  # (B, h)
    in_cols = (j >= left[:, None]) & (j < left[:, None] + size)  # (B, w)
    keep = ~(in_rows[:, None, :, None] & in_cols[:, None, None, :])  # (B, 1, h, w)
    return x * keep.to(x.dtype)


def _draw(op: str, batch: int, h: int, w: int, generator: torch.Generator) -> Tensor:
    """One op's parameters for ``batch`` images as float (batch, _PARAMS[op]); integers are exact in float32."""
    if op == "color":
        u = torch.rand(batch, 3, generator=generator)  # (B, 3)
        return u * torch.tensor([1.0, 2.0, 1.0]) + torch.tensor([-0.5, 0.0, 0.5])  # brightness, saturation, contrast
    if op == "translation":
        dy = torch.randint(-translation_shift(h), translation_shift(h) + 1, (batch, 1), generator=generator)
        dx = torch.randint(-translation_shift(w), translation_shift(w) + 1, (batch, 1), generator=generator)
        return torch.cat([dy, dx], dim=1).float()  # (B, 2)
    # cutout centre: uniform over [0, h + (1 - size % 2)), so an even square sits symmetrically over the image
    cy = torch.randint(0, h + (1 - cutout_size(h) % 2), (batch, 1), generator=generator)
    cx = torch.randint(0, w + (1 - cutout_size(w) % 2), (batch, 1), generator=generator)
    return torch.cat([cy, cx], dim=1).float()  # (B, 2)


class DiffAugment:
    """``augment(x)``: the policy's ops on ``x`` (B, C, h, w) with fresh per-image parameters; differentiable in ``x``.

    Args:
        policy: ops in the order applied (a subset of :data:`OPS`, no repeats).
        generator: host generator the parameters are drawn from (its state is the run's to save and restore).
        place: moves the packed host parameters (rows, P) next to ``x``, e.g. ``runtime.shard_batch``; default
            ``.to(x.device)``.
        host_rows: how many of a device batch's rows this process draws (``runtime.host_rows``: all of them except
            under multi-host SPMD, where every host feeds its part); default all.
    """

    def __init__(self, policy: Sequence[str], generator: torch.Generator,
                 place: Optional[Callable[[Tensor], Tensor]] = None,
                 host_rows: Optional[Callable[[int], int]] = None) -> None:
        unknown = [op for op in policy if op not in OPS]
        if unknown or len(set(policy)) != len(policy) or not policy:
            raise ValueError(f"policy must be distinct ops from {list(OPS)}, got {list(policy)}")
        self.policy = tuple(policy)
        self.generator = generator
        self.place = place
        self.host_rows = host_rows or (lambda rows: rows)

    def draw(self, batch: int, h: int, w: int) -> Tensor:
        """Packed host parameters (batch, P) for the policy, drawn in policy order."""
        return torch.cat([_draw(op, batch, h, w, self.generator) for op in self.policy], dim=1)  # (B, P)

    def apply(self, x: Tensor, params: Tensor) -> Tensor:
        """The policy on ``x`` (B, C, h, w) with packed parameters (B, P) on x's device; computed in fp32."""
        dtype = x.dtype
        x = x.float()
        column = 0
        for op in self.policy:
            p = params[:, column:column + _PARAMS[op]]  # (B, n)
            column += _PARAMS[op]
            if op == "color":
                x = adjust_color(x, p[:, 0], p[:, 1], p[:, 2])
            elif op == "translation":
                x = translate(x, p[:, 0].long(), p[:, 1].long())
            else:
                x = cutout(x, p[:, 0].long(), p[:, 1].long(), cutout_size(x.shape[2]))
        return x.to(dtype)

    def __call__(self, x: Tensor) -> Tensor:
        params = self.draw(self.host_rows(x.shape[0]), x.shape[2], x.shape[3])  # (rows, P) on the host
        params = self.place(params) if self.place is not None else params.to(x.device)  # (B, P)
        return self.apply(x, params)
