"""Capture and restore every host random generator as tensors and plain numbers.

Why: a resumed run must continue bit-identically, so the checkpoint holds the state of torch's CPU (and CUDA)
generators, numpy's and Python's ``random``. Checkpoints load with ``torch.load(weights_only=True)``, which refuses
numpy arrays and arbitrary tuples, so the numpy/Python states are stored as int64 tensors plus plain numbers.

CUDA: each process drives one GPU (``torch.cuda.set_device(local_rank)`` in the runtime), so ``cuda`` holds that
device's state only. A checkpoint must resume on another machine: with fewer or no GPUs the state is restored where it
fits and skipped otherwise. Checkpoints written before this rule hold a list with one state per visible GPU (8 on an
8-GPU node); from such a list the state of this process's device is restored when that device exists.
(SMYRF layer generators and the data order are saved by their owners: ``attention_rng_state`` and
``BatchStream.state_dict``.)
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["seed_everything", "get_rng_state", "set_rng_state"]


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy and Python ``random`` from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    """Every host RNG as ``{name: tensors / numbers}`` (safe for ``weights_only`` loading)."""
    version, py_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())  # this process's GPU only
    return state


def _restore_cuda(saved: Any) -> None:
    """Restore the CUDA generator of this process's device from a state (or an old per-GPU list); skip what has no
    device here (a checkpoint from 8 GPUs resumed on one, or on none)."""
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return
    device = torch.cuda.current_device()
    if isinstance(saved, (list, tuple)):  # old format: one state per GPU the writer saw; ours is at our index
        if device >= len(saved):
            return
        saved = saved[device]
    torch.cuda.set_rng_state(saved, device)


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"])
    )
    if "cuda" in state:
        _restore_cuda(state["cuda"])
