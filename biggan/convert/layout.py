"""BigGAN-PyTorch's state-dict layout (ajbrock/BigGAN-PyTorch, MIT): which network a file holds, which variant of
that code wrote it, and the architecture its tensor shapes imply.

The layout, as listed from that code at ch 96, 128 and 256 (``biggan_pytorch_state_dict.json`` of the reference
notes; every key of it is checked by tests/test_convert.py)::

    G  shared.weight                                       (n_classes, shared_dim) plain embedding, no SN
       linear.{weight, bias, u0, sv0}                      stem SN-linear: z chunk -> 16ch·4·4
       blocks.i.0.{conv1, conv2, conv_sc}.{weight, bias, u0, sv0}
       blocks.i.0.bn{1,2}.{stored_mean, stored_var}         cBN statistics (the cBN has no affine of its own)
       blocks.i.0.bn{1,2}.{gain, bias}.{weight, u0, sv0}    SN-linears without bias from [shared(y), z chunk]
       blocks.i.1.{gamma, theta.*, phi.*, g.*, o.*}         attention after block i (its convs have no bias)
       output_layer.0.{gain, bias, stored_mean, stored_var} plain BN (eps fixed at 1e-5)
       output_layer.2.{weight, bias, u0, sv0}              SN 3x3 conv to RGB
    D  blocks.i.0.{conv1, conv2[, conv_sc]}.{weight, bias, u0, sv0}; blocks.i.1.* attention; linear.*;
       embed.{weight, u0, sv0}                              the SN projection embedding (n_classes, 16ch)

Every SN layer keeps u0 (1, out) and sv0 (1,) (num_SVs = 1, the released setting). Other variants of that code write
other keys and are refused by name here: ``--mybn`` (``bnK.bn.stored_*``, ``accumulation_counter``), cross-replica BN
(``bnK.bn.running_*``), ``num_SVs > 1`` (``u1``, ``sv1``...), no shared embedding, a ``module.`` prefix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch

from biggan.errors import CheckpointError
from biggan.models.architectures import D_ARCHS, G_ARCHS

__all__ = ["Shapes", "SourceArchitecture", "IMPORTABLE_RESOLUTIONS", "state_shapes", "detect_network",
           "infer_architecture"]

Shapes = dict[str, tuple[int, ...]]
IMPORTABLE_RESOLUTIONS = (128, 256)  # the layouts the reference listing documents (and tests check key by key)

_BLOCK_RE = re.compile(r"blocks\.(\d+)\.0\.conv1\.weight")
_ATTENTION_RE = re.compile(r"blocks\.(\d+)\.1\.gamma")
_VARIANTS = (  # (a key pattern, what wrote such keys, what to do) — checked first, so the message names the cause
    (re.compile(r"^module\."), "a DataParallel wrapper (keys start with 'module.')",
     "save G.module.state_dict() instead"),
    (re.compile(r"\.bn\.(stored_mean|stored_var|accumulation_counter)$"), "--mybn (standing statistics)",
     "only the default batch norm is supported"),
    (re.compile(r"\.bn\.(running_mean|running_var|num_batches_tracked)$"), "--cross_replica batch norm",
     "only the default batch norm is supported"),
    (re.compile(r"\.(u|sv)[1-9]\d*$"), "num_G_SVs/num_D_SVs > 1 (extra singular vectors)",
     "only num_SVs = 1 (the released setting) is supported"),
)

@dataclass(frozen=True)
class SourceArchitecture:
    """What a BigGAN-PyTorch G or D file's shapes say about the network that wrote it."""

    network: Literal["G", "D"]
    resolution: int
    ch: int
    attention: tuple[int, ...]  # resolutions of the attention layers (after the block that outputs each)
    n_classes: int
    dim_z: Optional[int] = None  # G only: chunk size x (blocks + 1)
    shared_dim: Optional[int] = None  # G only

    def describe(self) -> str:
        what = "generator" if self.network == "G" else "discriminator"
        attention = ", ".join(str(r) for r in self.attention) or "none"
        extra = f", dim_z {self.dim_z}, shared_dim {self.shared_dim}" if self.network == "G" else ""
        return f"{self.resolution}x{self.resolution} {what}, ch {self.ch}, {self.n_classes} classes{extra}, " \
               f"attention at {attention}"


def state_shapes(obj: Any, path: Path) -> Shapes:
    """The shapes of a flat ``{key: floating tensor}`` state dict; CheckpointError for anything else."""
    if not isinstance(obj, Mapping) or not obj:
        kind = "an empty mapping" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        raise CheckpointError(f"{path} holds {kind}, not a BigGAN-PyTorch state dict; pass G_ema.pth, G.pth or D.pth")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            what = type(value).__name__
            raise CheckpointError(f"{path} is not a flat state dict of tensors (entry {key!r} is a {what}: an optimiser "
                                  "or run state?); pass G_ema.pth, G.pth or D.pth")
        if not value.is_floating_point():
            raise CheckpointError(f"{path}: '{key}' is {value.dtype}, but every tensor of a BigGAN-PyTorch G or D is "
                                  "floating point; pass G_ema.pth, G.pth or D.pth")
    for pattern, variant, fix in _VARIANTS:
        hit = next((key for key in obj if pattern.search(key)), None)
        if hit is not None:
            raise CheckpointError(f"{path} was written by {variant} (key '{hit}'); {fix}")
    return {key: tuple(value.shape) for key, value in obj.items()}


def detect_network(shapes: Shapes, path: Path) -> Literal["G", "D"]:
    """G (has the output layer) or D (has the projection embedding); CheckpointError if neither."""
    is_g = any(key.startswith(("output_layer.", "shared.")) for key in shapes)
    is_d = any(key.startswith("embed.") for key in shapes)
    if is_g == is_d:
        raise CheckpointError(f"{path} is neither a BigGAN-PyTorch G (output_layer.*, shared.*) nor a D (embed.*); "
                              "pass G_ema.pth, G.pth or D.pth")
    return "G" if is_g else "D"


def _shape(shapes: Shapes, key: str, path: Path) -> tuple[int, ...]:
    if key not in shapes:
        raise CheckpointError(f"{path} lacks the key '{key}' (an incomplete file, or another variant of the code); "
                              "pass an unmodified G_ema.pth, G.pth or D.pth")
    return shapes[key]


def _indices(shapes: Shapes, pattern: re.Pattern) -> list[int]:
    return sorted(int(m.group(1)) for m in map(pattern.fullmatch, shapes) if m)


def _resolution(num_blocks: int, network: str, path: Path) -> int:
    archs = G_ARCHS if network == "G" else D_ARCHS
    for res in IMPORTABLE_RESOLUTIONS:
        if len(archs[res].out_mults) == num_blocks:
            return res
    counts = ", ".join(f"{len(archs[r].out_mults)} at {r}" for r in IMPORTABLE_RESOLUTIONS)
    raise CheckpointError(f"{path} has {num_blocks} {network} blocks; only the 128x128 and 256x256 layouts can be "
                          f"imported ({network} blocks: {counts})")


def _attention(shapes: Shapes, out_resolutions: tuple[int, ...], network: str, path: Path) -> tuple[int, ...]:
    """Attention resolutions from ``blocks.i.1.gamma``; each must follow the first block with that output (ours)."""
    found = []
    for index in _indices(shapes, _ATTENTION_RE):
        if index >= len(out_resolutions) or out_resolutions.index(out_resolutions[index]) != index:
            raise CheckpointError(f"{path} has attention after {network} block {index}, a position this model cannot "
                                  "hold (another block outputs that resolution first)")
        found.append(out_resolutions[index])
    return tuple(found)


def infer_architecture(shapes: Shapes, network: Literal["G", "D"], path: Path) -> SourceArchitecture:
    """Resolution (from the block count), widths, classes, z size and attention placement, read from the shapes."""
    blocks = _indices(shapes, _BLOCK_RE)
    if not blocks or blocks != list(range(len(blocks))):
        raise CheckpointError(f"{path} has no consecutive blocks.<i>.0.conv1.weight keys (blocks {blocks}); "
                              "pass an unmodified G_ema.pth, G.pth or D.pth")
    res = _resolution(len(blocks), network, path)
    if network == "D":
        out_res = D_ARCHS[res].out_resolutions()
        return SourceArchitecture("D", res, _shape(shapes, "blocks.0.0.conv1.weight", path)[0],
                                  _attention(shapes, out_res, "D", path), _shape(shapes, "embed.weight", path)[0])
    if "shared.weight" not in shapes:
        raise CheckpointError(f"{path} is a G without a shared class embedding (G_shared off); only the shared, "
                              "hierarchical layout of the released models is supported")
    n_classes, shared_dim = _shape(shapes, "shared.weight", path)
    chunk = _shape(shapes, "linear.weight", path)[1]
    return SourceArchitecture("G", res, _shape(shapes, "output_layer.0.gain", path)[0],
                              _attention(shapes, G_ARCHS[res].out_resolutions(), "G", path), n_classes,
                              dim_z=chunk * (len(blocks) + 1), shared_dim=shared_dim)
