"""One class out of many: the start of fine-tuning a class-conditional BigGAN (ImageNet, 1000 classes) on data that
has no classes (faces).

Our decision, and why: the fine-tuned model keeps ``conditioning: class`` with ``n_classes: 1`` (an unlabelled dataset
trains as that one class, every label 0). The shared embedding's row becomes one vector and everything else of G is
untouched, so the pretrained hierarchy (cBN gain/bias from [class embedding, z chunk]) keeps working exactly as
trained. Dropping the embedding instead (``zhier``) would remove the class term from every cBN, whose SN-linears
have no bias to absorb it, and change their sigma: a different network, not a starting point.

The row is either the **mean** of all class embeddings (default: no class is favoured; G then draws from the
"average class") or the row of one chosen class (``G_1class(z, 0) == G(z, k)`` exactly). D's projection embedding
is reduced the same way; its spectral norm then renormalises the single row (sigma of a one-row table is the row's
norm), so D's projection term keeps its direction but not its scale: D is trained from there.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from biggan.errors import ConfigError
from biggan.models import ModelConfig

__all__ = ["parse_one_class", "collapse_to_one_class"]


def parse_one_class(text: str, n_classes: int) -> Optional[int]:
    """``"mean"`` -> None (the mean row), ``"K"`` -> class K; ConfigError naming the valid values."""
    if text == "mean":
        return None
    if not text.isdigit() or int(text) >= n_classes:
        raise ConfigError(f"--one-class {text!r}: use 'mean' or a class index in 0-{n_classes - 1}")
    return int(text)


def _one_row(table: torch.Tensor, index: Optional[int]) -> torch.Tensor:
    """(n, dim) -> (1, dim): the mean row, or row ``index``."""
    row = table.mean(dim=0, keepdim=True) if index is None else table[index:index + 1]
    return row.clone()


def collapse_to_one_class(
    cfg: ModelConfig, G: dict[str, torch.Tensor], D: Optional[dict[str, torch.Tensor]], index: Optional[int],
) -> tuple[ModelConfig, dict[str, torch.Tensor], Optional[dict[str, torch.Tensor]]]:
    """The one-class model config and state dicts (G's shared embedding, D's projection embedding reduced)."""
    G = dict(G, **{"shared.weight": _one_row(G["shared.weight"], index)})  # (1, shared_dim)
    if D is not None:
        row = _one_row(D["embed.weight"], index)  # (1, C)
        # u of a one-row table is (1, 1) and any nonzero value is its singular vector; sv: the row's norm.
        D = dict(D, **{"embed.weight": row, "embed.u": torch.ones(1, 1), "embed.sv": row.norm().reshape(())})
    return dataclasses.replace(cfg, n_classes=1), G, D
