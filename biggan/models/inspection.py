"""Model-level operations on built networks: switch attention in place, SMYRF RNG state, values to log, sizes.

All functions take the *unwrapped* model (``runtime.unwrap(m)``), so that names carry no ``module.`` prefix.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from biggan.errors import CheckpointError, ConfigError
from biggan.models.attention import SelfAttention2d
from biggan.models.config import AttentionConfig
from biggan.models.spectral_norm import SpectralNorm

__all__ = [
    "set_attention",
    "attention_rng_state",
    "load_attention_rng_state",
    "spectral_norm_values",
    "attention_gammas",
    "count_parameters",
]


def _attention_layers(model: nn.Module) -> dict[str, SelfAttention2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, SelfAttention2d)}


def set_attention(model: nn.Module, specs: list[AttentionConfig]) -> None:
    """Switch the kind / SMYRF settings of existing attention layers in place, matched by ``res``; weights untouched.

    Layers not named in ``specs`` keep their settings. A ``res`` with no attention layer in ``model`` is a ConfigError
    naming the ones it has (placement is fixed at build time: moving a layer would change the parameters).
    """
    layers = {layer.res: layer for layer in _attention_layers(model).values()}
    new_specs = {}
    for spec in specs:
        if spec.res not in layers:
            raise ConfigError(
                f"set_attention: this model has no attention layer at res {spec.res}; it has {sorted(layers)}"
            )
        layers[spec.res].configure(copy.deepcopy(spec))
        new_specs[spec.res] = layers[spec.res].spec
    cfg = getattr(model, "cfg", None)
    network = getattr(model, "network_name", None)
    if cfg is not None and network is not None:
        net_cfg = getattr(cfg, network)
        net_cfg.attention = [new_specs.get(s.res, s) for s in net_cfg.attention]


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
