"""Rebuild a trained generator from a checkpoint alone (what ``sample.py`` needs), optionally with other attention.

The checkpoint stores ``model_args`` (the model config), so no architecture flag has to be repeated (BigGAN-PyTorch
resumes broke unless every flag matched). Attention can be switched after loading: a SMYRF-trained G can be sampled
with dense attention, or with other hash/cluster budgets; the weights are the same, only the attention kind changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import torch
from torch import nn

from biggan.errors import CheckpointError, ConfigError
from biggan.models import AttentionConfig, ModelConfig, build_generator, model_config_from_dict, set_attention
from biggan.training.checkpoint import LATEST_NAME, load_checkpoint, load_state_strict

__all__ = ["resolve_checkpoint", "load_generator", "attention_overrides", "interpolation_latents"]


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint file, a run's ``checkpoints/`` folder or the run directory itself."""
    path = Path(path)
    for candidate in (path, path / LATEST_NAME, path / "checkpoints" / LATEST_NAME):
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"no checkpoint at {path}; pass a .pt file or a run directory with checkpoints/latest.pt")


def attention_overrides(
    cfg: ModelConfig,
    kind: Optional[Literal["dense", "smyrf"]],
    n_hashes: Optional[int] = None,
    q_cluster_size: Optional[int] = None,
    k_cluster_size: Optional[int] = None,
) -> list[AttentionConfig]:
    """New specs for every attention layer of G: another kind and/or other SMYRF settings (unset ones are kept)."""
    specs = []
    for spec in cfg.G.attention:
        new_kind = kind or spec.kind
        if new_kind == "dense":
            if any(v is not None for v in (n_hashes, q_cluster_size, k_cluster_size)):
                raise ConfigError("--n-hashes/--q-cluster-size/--k-cluster-size act only with --attention smyrf")
            specs.append(AttentionConfig(res=spec.res, kind="dense"))
            continue
        values = {
            "n_hashes": n_hashes if n_hashes is not None else spec.n_hashes,
            "q_cluster_size": q_cluster_size if q_cluster_size is not None else spec.q_cluster_size,
            "k_cluster_size": k_cluster_size if k_cluster_size is not None else spec.k_cluster_size,
        }
        missing = [f"--{k.replace('_', '-')}" for k, v in values.items() if v is None]
        if missing:
            raise ConfigError(f"G's attention at res {spec.res} was trained dense; give {', '.join(missing)} for smyrf")
        specs.append(AttentionConfig(res=spec.res, kind="smyrf", hashing=spec.hashing, **values))
    if not specs and kind is not None:
        raise ConfigError("this generator has no attention layer; drop --attention")
    return specs


def load_generator(
    path: str | Path, use_ema: bool = True, device: torch.device | str = "cpu"
) -> tuple[nn.Module, ModelConfig, dict]:
    """G_ema (or G) in eval mode on ``device``, its model config, and the checkpoint's step/images/best-FID info."""
    path = resolve_checkpoint(path)
    state = load_checkpoint(path, required=("format_version", "model_args", "G", "G_ema", "step"))
    cfg = model_config_from_dict(state["model_args"])
    G = build_generator(cfg)
    key = "G_ema" if use_ema and state["G_ema"] is not None else "G"
    load_state_strict(G, state[key], f"{key} in {path}")
    info = {"path": str(path), "network": key, "step": state["step"], "images_seen": state.get("images_seen"),
            "best_fid": state.get("best_fid")}
    return G.to(device).eval(), cfg, info


def interpolation_latents(z: torch.Tensor, steps: int) -> torch.Tensor:
    """Linear paths between consecutive rows of ``z`` (K, dim_z): ((K-1)·steps, dim_z), endpoints included."""
    if z.shape[0] < 2 or steps < 2:
        raise ConfigError("--interpolate needs at least two seeds and --steps >= 2")
    t = torch.linspace(0, 1, steps)[None, :, None]  # (1, steps, 1)
    paths = z[:-1, None, :] * (1 - t) + z[1:, None, :] * t  # (K-1, steps, dim_z)
    return paths.reshape(-1, z.shape[1])  # ((K-1)·steps, dim_z)


def apply_attention(G: nn.Module, specs: list[AttentionConfig]) -> None:
    """Switch G's attention layers in place (weights untouched)."""
    if specs:
        set_attention(G, specs)
