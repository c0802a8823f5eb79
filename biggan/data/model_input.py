"""Pixels to model input: the one function every input path uses, so all give the same values.

``model_input(images, flip)`` maps uint8 ``(B, 3, h, w)`` to float ``(B, 3, h, w)`` in [-1, 1] (``x / 127.5 - 1``)
and mirrors the images whose ``flip`` is set along their width. It runs wherever its inputs are: the loaders of
:mod:`biggan.runtime.loader` call it on the device, after copying the uint8 batch (4x fewer bytes than float32). The
mirror is applied to the uint8 pixels before the arithmetic; a permutation commutes with an elementwise map, so the
values are bit-identical to the former host formula (``where(flip, x.flip(3), x)`` on the floats), which
tests/test_data.py keeps as the oracle.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["model_input"]


def model_input(images: torch.Tensor, flip: Optional[torch.Tensor] = None) -> torch.Tensor:
    """uint8 ``(B, 3, h, w)`` and optional bool ``(B,)`` flips -> float32 ``(B, 3, h, w)`` in [-1, 1]."""
    if flip is not None:
        images = torch.where(flip[:, None, None, None], images.flip(3), images)  # (B, 3, h, w), mirrored along w
    return images.float().div_(127.5).sub_(1.0)  # in place on the fresh float copy: two fewer batch-sized buffers
