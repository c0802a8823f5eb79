"""Fine-tuning from a pretrained generator checkpoint: ``train.py --config ... --init-from FILE``.

FILE is any generator checkpoint (:data:`biggan.generation.checkpoint.GENERATOR_KEYS`): an imported BigGAN-PyTorch
model (``python -m biggan.convert``) or one of our own runs. It starts a NEW run in the config's run directory:

- G and G_ema from the file (G_ema = G when the file has none), D too when the file has one (else D starts fresh);
  fresh optimisers, step 0, no best FID.
- The run's model config must build the file's architecture where weights are loaded
  (:func:`biggan.models.architecture_differences`: resolution, dim_z, conditioning, classes, widths, attention
  resolutions; D's only when D is loaded). Attention KIND and SMYRF settings may differ (they have no parameters:
  dense-trained weights run as SMYRF), as may sn_iters and the epsilons; the log names every such difference.
- Every checkpoint of the run records its start (``init_from``: path and sha256 of FILE). Rerunning the same command
  resumes the run from its latest checkpoint, as any rerun does, and FILE is not loaded again; pointing a run that
  has checkpoints at another FILE, or a from-scratch run at any, is refused: nothing is overwritten.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from biggan.checkpoint import load_checkpoint
from biggan.errors import CheckpointError
from biggan.fid.weights import file_sha256
from biggan.generation.checkpoint import GENERATOR_KEYS
from biggan.models import ModelConfig, architecture_differences, load_state_strict, model_config_from_dict

__all__ = ["start_from_pretrained", "check_resumed_start"]

_OTHER_SETTINGS = ("sn_iters", "sn_eps", "bn_eps")  # not architecture, but worth a line when they change


def _record(path: Path) -> dict[str, str]:
    return {"path": str(path), "sha256": file_sha256(path)}


def _differences_in_kind(file_cfg: ModelConfig, run_cfg: ModelConfig, networks: tuple[str, ...]) -> list[str]:
    """What differs without changing shapes: attention kinds/settings, SN/BN settings (for the log)."""
    lines = []
    for net in networks:
        run_specs = {spec.res: spec for spec in getattr(run_cfg, net).attention}
        for spec in getattr(file_cfg, net).attention:
            if run_specs[spec.res] != spec:
                lines.append(f"{net} attention at {spec.res}: {spec.kind} in the file, {run_specs[spec.res].kind} "
                             "in this run (same weights)")
    lines += [f"model.{key} {getattr(file_cfg, key)} in the file, {getattr(run_cfg, key)} in this run"
              for key in _OTHER_SETTINGS if getattr(file_cfg, key) != getattr(run_cfg, key)]
    return lines


def start_from_pretrained(state: Any, path: Path) -> list[str]:
    """Load G, G_ema (and D) of ``path`` into ``state`` (a fresh :class:`TrainingState`); returns the log lines.

    Raises:
        CheckpointError: not a generator checkpoint, or the run's model does not build its architecture.
    """
    ckpt = load_checkpoint(path, required=GENERATOR_KEYS)
    file_cfg, run_cfg = model_config_from_dict(ckpt["model_args"]), state.cfg.model
    has_d = ckpt.get("D") is not None
    networks = ("G", "D") if has_d else ("G",)
    diffs = architecture_differences(file_cfg, run_cfg, networks)
    if diffs:
        raise CheckpointError(f"{path} does not fit this run's model ({'; '.join(diffs[:3])}: the file's value vs "
                              "the run's); set those model settings to the file's to fine-tune from it")
    load_state_strict(state.G_, ckpt["G"], f"G in {path}")
    load_state_strict(state.G_ema, ckpt["G_ema"] if ckpt["G_ema"] is not None else ckpt["G"], f"G_ema in {path}")
    if has_d:
        load_state_strict(state.D_, ckpt["D"], f"D in {path}")
    state.init_from = _record(path)
    loaded = "G, G_ema and D" if has_d else "G and G_ema (D starts fresh: the file has none)"
    return [f"fine-tuning from {path}: {loaded}; fresh optimisers, step 0"] + [
        f"  {line}" for line in _differences_in_kind(file_cfg, run_cfg, networks)]


def check_resumed_start(saved: Optional[dict[str, str]], path: Path, checkpoint: Path) -> str:
    """A rerun with ``--init-from path`` of a run that has checkpoints: the log line when it is the same fine-tuning
    run (it resumes), a CheckpointError naming the fix otherwise (the run is left untouched)."""
    if saved is None:
        raise CheckpointError(f"this run already has checkpoints ({checkpoint}) of a run that did not start from "
                              f"--init-from; give the fine-tuning run its own name=..., or drop --init-from to resume")
    if saved["sha256"] != file_sha256(path):
        raise CheckpointError(f"this run started from {saved['path']}, not {path} (another file); give a new "
                              f"fine-tuning run its own name=..., or rerun with --init-from {saved['path']} to resume")
    return f"resuming the fine-tuning run that started from {saved['path']} (--init-from is not loaded again)"
