"""Local FID Inception weights: find them, load them, or say exactly how to get them. Never downloads at run time.

pytorch-fid reads ``pt_inception-2015-12-05-6726825d.pth`` (the TF Inception of 2015-12-05 ported to its
``InceptionV3``) through torch-hub's cache and otherwise fetches it from GitHub. Our machines cannot reach GitHub, so
the file is taken from ``fid.weights_path`` or else from the hub cache, and a missing or unreadable file is one
:class:`WeightsError` naming ``python -m biggan.fid install-weights`` (see :mod:`biggan.fid.install`).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import torch

from biggan.errors import WeightsError

__all__ = ["WEIGHTS_FILENAME", "default_weights_path", "resolve_weights_path", "load_weights", "file_sha256"]

WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
INSTALL_HINT = "run `python -m biggan.fid install-weights` (or set fid.weights_path to a local copy)"


def default_weights_path() -> Path:
    """Where pytorch-fid itself looks: ``$TORCH_HOME/hub/checkpoints/<file>`` (torch.hub.get_dir()/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILENAME


def resolve_weights_path(weights_path: str | Path | None) -> Path:
    """The configured path if given, else the hub cache file; raise WeightsError if it does not exist."""
    path = Path(weights_path).expanduser() if weights_path else default_weights_path()
    if not path.is_file():
        raise WeightsError(f"FID Inception weights not found at {path}; {INSTALL_HINT}")
    return path


def load_weights(weights_path: str | Path | None) -> tuple[dict[str, torch.Tensor], Path]:
    """Load the state dict (``weights_only``: a weights file must never execute code) and return it with its path."""
    path = resolve_weights_path(weights_path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, foreign pickle, wrong format: all the same fix
        raise WeightsError(f"FID Inception weights at {path} are corrupt ({type(err).__name__}); "
                           f"delete the file and {INSTALL_HINT}") from err
    if not isinstance(state, dict) or "Mixed_7c.branch_pool.conv.weight" not in state:
        raise WeightsError(f"{path} is not a pytorch-fid Inception state dict; delete it and {INSTALL_HINT}")
    return state, path


def file_sha256(path: Path) -> str:
    """Content hash of the weights file; part of the extractor identity stored with every FID and reference stats."""
    stat = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    """Hashing 95 MB takes a while on a busy CPU: once per file version per process."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
