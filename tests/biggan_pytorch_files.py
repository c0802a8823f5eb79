"""Random-weight state dicts in BigGAN-PyTorch's layout, for the importer's tests (no code of theirs involved).

The layout is ``tests/data/biggan_pytorch_state_dict.json``: every key, shape and dtype of their G and D at 128 and
256 (ch 96, dim_z 120, shared_dim 128, 1000 classes, attention at 64), listed from their code with random weights.
:func:`their_state` keeps those keys exactly and shrinks the shapes to a small width: at ch 96 every channel dimension
is a multiple of 96/8 = 12 (the narrowest is attention's C/8 = 12) and no other dimension is (RGB 3, 1, classes 1000,
shared_dim 128, z chunk 20 or 17, cBN input 148 or 145), so channel dims scale by ch/96 and the rest map by value.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

LAYOUT = json.loads((Path(__file__).resolve().parent / "data" / "biggan_pytorch_state_dict.json").read_text())
ENTRIES = ("G128", "D128", "G256", "D256")
LAYOUT_CH, SHARED_DIM, N_CLASSES = 96, 128, 1000


def _scaled(shape: list[int], ch: int, n_classes: int, shared_dim: int, chunk: int) -> tuple[int, ...]:
    out = []
    for dim in shape:
        if dim % (LAYOUT_CH // 8) == 0:
            out.append(dim * ch // LAYOUT_CH)
        else:
            out.append({N_CLASSES: n_classes, SHARED_DIM: shared_dim, SHARED_DIM + chunk: shared_dim + chunk}.get(dim, dim))
    return tuple(out)


def their_shapes(entry: str, ch: int = LAYOUT_CH, n_classes: int = N_CLASSES,
                 shared_dim: int = SHARED_DIM) -> dict[str, tuple[int, ...]]:
    """The layout's keys with shapes at width ``ch`` (a multiple of 8), ``n_classes`` and ``shared_dim``."""
    table = LAYOUT[entry]["state_dict"]
    chunk = table["linear.weight"][0][1] if entry.startswith("G") else 0
    return {key: _scaled(shape, ch, n_classes, shared_dim, chunk) for key, (shape, _) in table.items()}


def _value(key: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "stored_var":
        return torch.rand(shape, generator=gen) * 1.5 + 0.5
    if leaf == "stored_mean":
        return torch.randn(shape, generator=gen) * 0.3
    if leaf == "gamma":
        return torch.tensor(0.7)
    if leaf == "sv0":
        return torch.rand(shape, generator=gen) + 0.5
    if leaf == "u0":
        return torch.randn(shape, generator=gen) * 0.9  # not unit norm, like G_ema's EMA-averaged u
    if key == "output_layer.0.gain":
        return 1 + 0.1 * torch.randn(shape, generator=gen)
    if leaf == "bias":
        return torch.randn(shape, generator=gen) * 0.1  # conv biases (conv1's is folded) and the output BN's shift
    return torch.randn(shape, generator=gen) * 0.05


def their_state(entry: str, ch: int = 8, n_classes: int = 5, shared_dim: int = 8, seed: int = 0,
                dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A random state dict in their layout (their key order), values in ``dtype`` (fp32-representable)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = their_shapes(entry, ch, n_classes, shared_dim)
    return {key: _value(key, shape, gen).to(dtype) for key, shape in shapes.items()}


def write_their_file(path: Path, entry: str, **kwargs) -> Path:
    """``torch.save`` of :func:`their_state`, as their ``utils.save_weights`` writes G.pth / D.pth."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(their_state(entry, **kwargs), path)
    return path
