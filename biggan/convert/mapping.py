"""Our state-dict keys <- BigGAN-PyTorch's: one recipe per key of OUR network, checked against the file both ways.

The plan is made from our network's own keys (built from the inferred config), so every tensor we need names its
source, and every source key must be consumed by some recipe: a key nobody reads is an error, never dropped.

    ours                                   <- theirs                                  recipe
    X.u (1, out) / X.sv ()                 <- X.u0 (1, out) / X.sv0 (1,)              copy / scalar ((1,) -> ())
    blocks.i.<m>                           <- blocks.i.0.<m>                          (nested ModuleList flattened)
    attention.<res>.<m>                    <- blocks.<block with output res>.1.<m>
    blocks.i.bnK.bn.running_{mean,var}     <- blocks.i.0.bnK.stored_{mean,var}
    blocks.i.bn2.bn.running_mean           <- stored_mean(bn2) - conv1.bias           fold (our conv1 has no bias)
    out_bn.{weight,bias,running_*}         <- output_layer.0.{gain,bias,stored_*}
    out_conv.<m>                           <- output_layer.2.<m>
    *.num_batches_tracked                  <- (none: 0; unused with BN momentum 0.1)

The fold is exact in eval mode: bn2 sees conv1(x) + b and normalises with the stored (m, v), and
(conv1(x) + b - m) / sqrt(v + eps) = (conv1(x) - (m - b)) / sqrt(v + eps); cBN's per-sample 1 + gain(y) and bias(y)
act after the normalisation. In training the batch mean absorbs b exactly, so dropping the bias loses nothing there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from biggan.convert.layout import Shapes
from biggan.errors import CheckpointError

__all__ = ["Recipe", "plan_state", "check_plan", "apply_plan"]

_LEAF = {"u": "u0", "sv": "sv0"}  # SN buffers: ours -> theirs
_OUT_BN = {"weight": "gain", "bias": "bias", "running_mean": "stored_mean", "running_var": "stored_var"}
_CBN_STAT = re.compile(r"(bn[12])\.bn\.(running_mean|running_var|num_batches_tracked)")


@dataclass(frozen=True)
class Recipe:
    """How one of our tensors is made: ``copy`` / ``scalar`` (reshape (1,) -> ()) of ``sources[0]``; ``fold``
    (``sources[0] - sources[1]``); ``zero`` (an int64 counter that the source does not keep)."""

    kind: Literal["copy", "scalar", "fold", "zero"]
    sources: tuple[str, ...] = ()


def _leaf(rest: str) -> Recipe:
    """A module-relative key whose module maps one-to-one: SN buffer names differ, everything else is copied."""
    module, _, leaf = rest.rpartition(".")
    name = f"{module}.{_LEAF.get(leaf, leaf)}" if module else _LEAF.get(leaf, leaf)
    return Recipe("scalar" if leaf == "sv" else "copy", (name,))


def _block_key(prefix: str, rest: str) -> Recipe:
    """``blocks.i.<rest>`` of ours from ``<prefix> = blocks.i.0`` of theirs (cBN statistics and the fold included)."""
    stat = _CBN_STAT.fullmatch(rest)
    if stat is None:
        return _leaf(f"{prefix}.{rest}")
    bn, field = stat.groups()
    if field == "num_batches_tracked":
        return Recipe("zero")
    stored = f"{prefix}.{bn}.stored_{field[len('running_'):]}"
    if bn == "bn2" and field == "running_mean":
        return Recipe("fold", (stored, f"{prefix}.conv1.bias"))
    return Recipe("copy", (stored,))


def _recipe(key: str, network: str, attention_block: dict[str, int]) -> Recipe:
    head, _, rest = key.partition(".")
    if head == "blocks":
        index, _, rest = rest.partition(".")
        return _block_key(f"blocks.{index}.0", rest)
    if head == "attention":
        res, _, rest = rest.partition(".")
        return _leaf(f"blocks.{attention_block[res]}.1.{rest}")
    if network == "G" and head == "out_bn":
        return Recipe("zero") if rest == "num_batches_tracked" else Recipe("copy", (f"output_layer.0.{_OUT_BN[rest]}",))
    if network == "G" and head == "out_conv":
        return _leaf(f"output_layer.2.{rest}")
    return _leaf(key)  # G: shared, linear; D: linear, embed


def plan_state(ours: Shapes, network: Literal["G", "D"], attention_block: dict[str, int]) -> dict[str, Recipe]:
    """One recipe per key of our network (``ours``: its state-dict shapes).

    Args:
        attention_block: ``{str(res): block index}`` of our attention layers (keys ``attention.<res>.*``).
    """
    return {key: _recipe(key, network, attention_block) for key in ours}


def check_plan(plan: dict[str, Recipe], theirs: Shapes, ours: Shapes, path: Path, expect: str) -> None:
    """Every source exists with the shape its recipe needs, and every key of the file is used by some recipe.

    Args:
        expect: the architecture the shapes were inferred as, for the message (e.g. "a 128x128 generator, ch 96...").
    """
    used = {source for recipe in plan.values() for source in recipe.sources}
    unused = [key for key in theirs if key not in used]
    if unused:
        raise CheckpointError(f"{path} has the key '{unused[0]}' that no tensor of the imported model is made from "
                              f"({len(unused)} such keys; another variant of the code?); unknown keys are not dropped")
    for key, recipe in plan.items():
        for source in recipe.sources:
            if source not in theirs:
                raise CheckpointError(f"{path} lacks the key '{source}' that {expect} has (an incomplete file, or "
                                      "another architecture); pass an unmodified G_ema.pth, G.pth or D.pth")
            want = (1,) if recipe.kind == "scalar" else ours[key]
            if theirs[source] != want:
                raise CheckpointError(f"{path}: '{source}' is {theirs[source]} but {expect} has {want}; the file's "
                                      "tensors do not agree with each other (a modified or truncated state dict?)")


def apply_plan(plan: dict[str, Recipe], theirs: dict[str, torch.Tensor],
               dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Our state dict in ``dtype`` (counters int64) from the file's tensors (fp16/bf16/fp64 files included).

    The fold is computed in float64 and rounded once to ``dtype``.
    """
    out = {}
    for key, recipe in plan.items():
        if recipe.kind == "zero":
            out[key] = torch.zeros((), dtype=torch.int64)
            continue
        first = theirs[recipe.sources[0]]
        if recipe.kind == "fold":
            value = first.double() - theirs[recipe.sources[1]].double()  # stored_mean(bn2) - conv1.bias
        else:
            value = first.reshape(()) if recipe.kind == "scalar" else first
        out[key] = value.to(dtype=dtype, copy=True)
    return out
