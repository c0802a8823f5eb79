"""Model-level operations on built networks: switch attention in place, strict state loading, SMYRF RNG state,
values to log, sizes.

All functions take the *unwrapped* model (``runtime.unwrap(m)``), so that names carry no ``module.`` prefix.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from biggan.errors import CheckpointError, ConfigError
from biggan.models.attention import SelfAttention2d
from biggan.models.config import AttentionConfig
from biggan.models.spectral_norm import SpectralNorm

__all__ = [
    "set_attention",
    "load_state_strict",
    "attention_rng_state",
    "load_attention_rng_state",
    "spectral_norm_values",
    "attention_gammas",
    "count_parameters",
    "describe_attention",
]


def _attention_layers(model: nn.Module) -> dict[str, SelfAttention2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, SelfAttention2d)}


def set_attention(model: nn.Module, specs: list[AttentionConfig]) -> None:
    """Switch the kind / SMYRF settings of existing attention layers in place, matched by ``res``; weights untouched.

    Layers not named in ``specs`` keep their settings; the network's ``cfg`` reports the new ones. A ``res`` with no
    attention layer in ``model`` is a ConfigError naming the ones it has (placement is fixed at build time: moving a
    layer would change the parameters).
    """
    layers = {layer.res: layer for layer in _attention_layers(model).values()}
    for spec in specs:
        if spec.res not in layers:
            raise ConfigError(
                f"set_attention: this model has no attention layer at res {spec.res}; it has {sorted(layers)}"
            )
        layers[spec.res].configure(copy.deepcopy(spec))


def load_state_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(strict=True)`` with a one-line ``CheckpointError`` naming the first mismatch.

    Why: torch's own error lists every mismatching key across many lines (and a traceback); a user who points a 256 run
    at a 128 checkpoint needs one line saying which architecture differs and what to do.

    Args:
        module: the freshly built network.
        state_dict: its state from the checkpoint.
        what: names the source in the message, e.g. ``"G in runs/00001/checkpoints/latest.pt"``.
    """
    expected = module.state_dict()
    for key, value in expected.items():
        if key not in state_dict:
            raise CheckpointError(
                f"{what} does not match the model: key '{key}' is missing from the checkpoint (another architecture); "
                "rebuild the model from the checkpoint's own config, or pass a checkpoint of this architecture"
            )
        got = state_dict[key]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(value.shape):
            got_shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise CheckpointError(
                f"{what} does not match the model: '{key}' is {got_shape} in the checkpoint but "
                f"{tuple(value.shape)} in the model (another architecture); rebuild the model from the checkpoint's "
                "own config, or pass a matching checkpoint"
            )
    extra = [key for key in state_dict if key not in expected]
    if extra:
        raise CheckpointError(
            f"{what} does not match the model: the checkpoint has the extra key '{extra[0]}' (another architecture); "
            "rebuild the model from the checkpoint's own config, or pass a checkpoint of this architecture"
        )
    module.load_state_dict(state_dict, strict=True)


def attention_rng_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The training-mode SMYRF generator state of every attention layer, keyed by module name (for checkpoints)."""
    return {name: layer.generator.get_state() for name, layer in _attention_layers(model).items()}


def load_attention_rng_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Restore :func:`attention_rng_state`; the layer names must match exactly."""
    layers = _attention_layers(model)
    if set(state) != set(layers):
        raise CheckpointError(
            f"attention RNG state has layers {sorted(state)} but the model has {sorted(layers)}; "
            f"load it into a model with the same attention placement"
        )
    for name, layer in layers.items():
        layer.generator.set_state(state[name].clone())


def spectral_norm_values(model: nn.Module) -> dict[str, torch.Tensor]:
    """Last estimated top singular value of every SN layer (before normalisation), keyed by module name."""
    return {name: m.sv for name, m in model.named_modules() if isinstance(m, SpectralNorm)}


def attention_gammas(model: nn.Module) -> dict[str, torch.Tensor]:
    """The residual gain gamma of every attention layer (0 at init), keyed by module name."""
    return {name: layer.gamma for name, layer in _attention_layers(model).items()}


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (whether or not ``requires_grad`` is currently on)."""
    return sum(p.numel() for p in model.parameters())


def describe_attention(net: nn.Module, name: str) -> list[str]:
    """One line per attention layer: resolution, channels, tokens and kind (or a line saying there is none)."""
    lines = []
    for module in net.modules():
        if not isinstance(module, SelfAttention2d):
            continue
        spec, n_q = module.spec, module.res**2
        n_k = n_q // 4  # keys and values are 2x2 max-pooled
        line = (f"  {name}: after the block with output {module.res}x{module.res}, C={module.channels} "
                f"(d={module.channels // 8}, dv={module.channels // 2}), Nq={n_q}, Nk={n_k}: {spec.kind}")
        if spec.kind == "smyrf":
            clusters = n_q // spec.q_cluster_size
            per_query = spec.n_hashes * spec.k_cluster_size + (clusters if spec.summary != "none" else 0)
            share = per_query / n_k  # score entries per query, relative to dense (summaries: nc more)
            line += (f" H={spec.n_hashes} cq={spec.q_cluster_size} ck={spec.k_cluster_size} summary={spec.summary} "
                     f"({clusters} clusters/round, {share:.1%} of dense score entries)")
        lines.append(line)
    return lines or [f"  {name}: no attention"]
