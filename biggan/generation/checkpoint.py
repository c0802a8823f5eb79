"""A generator rebuilt from a checkpoint alone: the generator part of the checkpoint schema.

A *generator checkpoint* is the smallest file that ``sample.py`` can use and a fine-tuning run can start from: the
keys of :data:`GENERATOR_KEYS` (the resolved run config, the model config as ``model_args``, the step it was saved at,
and the state dicts of G and G_ema; ``G_ema`` may be None), and optionally ``class_names`` (a list, one name per
class of a class-conditional G, or None). The full training state (:mod:`biggan.training.state`) extends it with D,
the optimisers and every random stream; an imported pretrained model (:mod:`biggan.convert`) is a generator
checkpoint, optionally with ``D``. Because ``model_args`` is inside, no architecture flag has to
be repeated (BigGAN-PyTorch resumes broke unless every flag matched).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from biggan.checkpoint import LATEST_NAME, load_checkpoint
from biggan.errors import CheckpointError
from biggan.models import ModelConfig, build_generator, load_state_strict, model_config_from_dict

__all__ = ["GENERATOR_KEYS", "resolve_checkpoint", "load_generator"]

GENERATOR_KEYS: tuple[str, ...] = ("format_version", "config", "model_args", "step", "G", "G_ema")


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint file, a run's ``checkpoints/`` folder or the run directory itself."""
    path = Path(path)
    for candidate in (path, path / LATEST_NAME, path / "checkpoints" / LATEST_NAME):
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"no checkpoint at {path}; pass a .pt file or a run directory with checkpoints/latest.pt")


def load_generator(
    path: str | Path, use_ema: bool = True, device: torch.device | str = "cpu"
) -> tuple[nn.Module, ModelConfig, dict[str, Any]]:
    """G_ema (or G) in eval mode on ``device``, its model config, and the checkpoint's step/images/best-FID/class
    names info."""
    path = resolve_checkpoint(path)
    state = load_checkpoint(path, required=GENERATOR_KEYS)
    cfg = model_config_from_dict(state["model_args"])
    G = build_generator(cfg)
    key = "G_ema" if use_ema and state["G_ema"] is not None else "G"
    load_state_strict(G, state[key], f"{key} in {path}")
    info = {"path": str(path), "network": key, "step": state["step"], "images_seen": state.get("images_seen"),
            "best_fid": state.get("best_fid"), "class_names": state.get("class_names")}
    return G.to(device).eval(), cfg, info
