"""SMYRF against dense attention on a trained generator: the same z through both, image by image.

SMYRF has no parameters, so a checkpoint's G runs with either kind; the paper calls the two interchangeable. This puts
that to the test on the user's own model: ``sample.py --compare-attention`` writes one grid whose rows are
[SMYRF | dense | 4 x |difference|] per seed and prints (and writes as JSON) each image's difference.

Shape legend: K images; h×w spatial size.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from biggan.generation.attention import attention_overrides
from biggan.generation.generate import generate
from biggan.images import to_uint8
from biggan.models import AttentionConfig, ModelConfig, set_attention

__all__ = ["DIFF_GAIN", "compare_attention", "comparison_rows"]

DIFF_GAIN = 4.0  # the difference column shows 4 |smyrf - dense| (in [-1, 1] pixel units), clamped


def compare_attention(
    G: nn.Module, cfg: ModelConfig, smyrf: list[AttentionConfig], z: Tensor, batch_size: int, device: str,
    y: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """Images (K, 3, h, w) of G with the SMYRF ``specs`` and with dense attention in every layer, from the same z
    (and labels ``y``, for a class-conditional G). G's attention is left as the SMYRF specs say."""
    set_attention(G, attention_overrides(cfg, "dense"))
    x_dense = generate(G, z, batch_size, device, y)  # (K, 3, h, w)
    set_attention(G, smyrf)
    return generate(G, z, batch_size, device, y), x_dense


def comparison_rows(x_smyrf: Tensor, x_dense: Tensor) -> tuple[Tensor, list[dict[str, float]]]:
    """The grid's images (3K, 3, h, w): per seed SMYRF, dense, the amplified difference; and per image
    rel_l2 = ||smyrf - dense|| / ||dense||, max_abs (in [-1, 1] units) and PSNR in dB of the uint8 images."""
    diff = x_smyrf - x_dense  # (K, 3, h, w)
    rows = []
    for d, dense, smyrf in zip(diff, x_dense, x_smyrf):
        mse = (to_uint8(smyrf).float() - to_uint8(dense).float()).square().mean().item()
        rows.append({"rel_l2": (d.norm() / dense.norm()).item(), "max_abs": d.abs().max().item(),
                     "psnr_db": float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(255.0**2 / mse)).item()})
    shown = (DIFF_GAIN * diff.abs()).clamp(0, 2) - 1  # (K, 3, h, w): 0 -> black
    return torch.stack([x_smyrf, x_dense, shown], 1).flatten(0, 1), rows
