"""Atomic, crash-safe checkpoint files: write, alias, prune, find and load them safely.

Why: a run on a spot VM is killed at arbitrary moments (SIGKILL, power loss, disk full). Whatever instant that happens,
the directory must still hold a complete checkpoint that loads, and at most one checkpoint interval may be lost. So
every file is written to a temporary name in the same directory, flushed and fsynced, then renamed over its final name
with ``os.replace`` (atomic on POSIX), and the directory is fsynced so the rename itself survives a crash. Old files are
pruned only after the new one is complete, and the newest is never pruned.

Layout of ``ckpt_dir``::

    step-00001234.pt   one full training state per saved step; the newest ``keep_last`` are kept
    latest.pt          a hard link to (or, without link support, a copy of) the newest step file: a real file that
                       ``sample.py .../latest.pt`` and auto-resume read
    best.pt            the same for the best-by-FID state (never pruned)
    .tmp-*             a write in progress; a leftover from a killed process is removed by the next save

File format: ``torch.save`` of a dict that holds only tensors and plain containers/numbers/strings, so that it loads
with ``torch.load(weights_only=True)``. That loader refuses any pickle that would construct arbitrary objects, so
opening a checkpoint from someone else can never execute code (a full pickle can run anything on load). Every dict
carries ``format_version`` (:data:`FORMAT_VERSION`); what the other keys are is the schema of whoever writes them:
a generator checkpoint (:mod:`biggan.generation.checkpoint`) and the full training state that extends it
(:mod:`biggan.training.state`). This module stores and loads such dicts and knows none of their keys.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from biggan.errors import CheckpointError

__all__ = [
    "FORMAT_VERSION",
    "LATEST_NAME",
    "BEST_NAME",
    "save_checkpoint",
    "LoadFixes",
    "read_torch_file",
    "load_checkpoint",
    "write_checkpoint_file",
    "find_latest",
    "list_step_checkpoints",
    "step_path",
]

FORMAT_VERSION = 1  # bump when a key of the checkpoint schema changes meaning; readers refuse newer files
LATEST_NAME = "latest.pt"
BEST_NAME = "best.pt"
_TMP_PREFIX = ".tmp-"
_STEP_RE = re.compile(r"^step-(\d{8,})\.pt$")
# torch's weights_only unpickler names the global it refused ("Unsupported global: GLOBAL builtins.exec ..."); any other
# UnpicklingError means the bytes are not a valid pickle at all (truncated or corrupt).
_UNSAFE_GLOBAL_RE = re.compile(r"Unsupported (?:global|class)[^A-Za-z]*(?:GLOBAL )?([\w.]+)")
# What torch.load(weights_only=True) can read back; anything else would make the saved file unloadable.
_PLAIN_SCALARS = (bool, int, float, str, bytes, type(None), torch.dtype, torch.device, torch.Size)


def step_path(ckpt_dir: str | os.PathLike, step: int) -> Path:
    """Path of the step file for ``step``; zero-padded so that names sort by step."""
    return Path(ckpt_dir) / f"step-{step:08d}.pt"


def list_step_checkpoints(ckpt_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """All complete step files in ``ckpt_dir`` as ``(step, path)``, oldest first (temp files are never listed)."""
    directory = Path(ckpt_dir)
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        match = _STEP_RE.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry))
    return sorted(found)


def find_latest(ckpt_dir: str | os.PathLike) -> Path | None:
    """The checkpoint to resume from: ``latest.pt`` if present, else the newest step file, else None.

    ``latest.pt`` is only ever replaced atomically by a complete file, so existence is enough; the fallback covers a
    crash between writing a step file and updating ``latest.pt`` (or a user who deleted it).
    """
    latest = Path(ckpt_dir) / LATEST_NAME
    if latest.is_file():
        return latest
    steps = list_step_checkpoints(ckpt_dir)
    return steps[-1][1] if steps else None


def save_checkpoint(
    state: Mapping[str, Any], ckpt_dir: str | os.PathLike, step: int, keep_last: int, best: bool = False
) -> Path:
    """Write ``state`` atomically as ``step-XXXXXXXX.pt``; point ``latest.pt`` (and ``best.pt``) at it; prune.

    Args:
        state: the training state (tensors and plain containers only; see the module docstring).
        ckpt_dir: the checkpoint directory (created if missing).
        step: the training step the state belongs to (names the file).
        keep_last: how many step files to keep (>= 1); older ones are removed only after the new one is complete.
        best: also make this state ``best.pt``.

    Returns:
        the path of the new step file.

    Raises:
        CheckpointError: the directory cannot be written (disk full, read-only, permissions). The temporary file is
            removed and every previously written checkpoint is left intact.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    _check_plain(state, "state")
    directory = Path(ckpt_dir)
    target = step_path(directory, step)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(directory)
        _atomic_write(directory, target, lambda f: torch.save(dict(state), f))
        _atomic_alias(directory, target, directory / LATEST_NAME)
        if best:
            _atomic_alias(directory, target, directory / BEST_NAME)
    except OSError as err:
        raise _write_error(target, err) from None
    _prune(directory, keep_last, keep=target)
    return target


@dataclass(frozen=True)
class LoadFixes:
    """What a refused torch file's one-line error tells the user to do, per kind of failure (the problem is named by
    :func:`read_torch_file`; the fix depends on what the caller expected the file to be)."""

    missing: str  # the path does not exist or is not a file
    unsafe: str  # a pickle that would build Python objects
    corrupt: str  # truncated, corrupt or not a torch file


_CHECKPOINT_FIXES = LoadFixes(
    missing="pass the path of a .pt file from a run's checkpoints/ folder, such as <run>/checkpoints/latest.pt",
    unsafe="use a checkpoint written by this project's train.py",
    corrupt="use an earlier step-*.pt from the same folder (or delete this file to resume from the previous one), or "
            "pass a file written by train.py",
)


def read_torch_file(path: str | os.PathLike, what: str, fixes: LoadFixes) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``: never executes code from the file.

    Args:
        path: the file.
        what: names the file in messages (``"checkpoint"``, ``"BigGAN-PyTorch file"``).
        fixes: the fix each kind of failure's message ends with.

    Raises:
        CheckpointError: missing, not a file, unsafe (a pickle that would build arbitrary objects), or truncated/corrupt.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist; {fixes.missing}")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is not a file; {fixes.missing}")
    try:
        with warnings.catch_warnings():
            # torch warns about unusual pickle protocols before failing; the one-line error below says it all.
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = _UNSAFE_GLOBAL_RE.search(str(err))
        if unsafe:
            raise CheckpointError(
                f"{what} {path} references the Python object {unsafe.group(1)} and was refused (a pickle that "
                f"builds objects could execute code when loaded); {fixes.unsafe}"
            ) from None
        # torch's message here advises weights_only=False, which is exactly what must not be done with unknown files.
        raise _corrupt_error(path, what, "not a valid torch pickle", fixes.corrupt) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, UnicodeDecodeError, IndexError) as err:
        raise _corrupt_error(path, what, err, fixes.corrupt) from None


def load_checkpoint(path: str | os.PathLike, required: Iterable[str] = ()) -> dict[str, Any]:
    """Load a checkpoint on the CPU with ``weights_only=True`` (never executes code from the file).

    Args:
        path: the checkpoint file.
        required: keys the caller's schema needs (a generator checkpoint's for ``sample.py``, the training state's
            for a resume).

    Raises:
        CheckpointError: missing, truncated/corrupt, unsafe (a pickle that would build arbitrary objects), not a
            checkpoint of this project, a newer format, or missing keys. The message names the file and the fix.
    """
    path = Path(path)
    obj = read_torch_file(path, "checkpoint", _CHECKPOINT_FIXES)
    if not isinstance(obj, dict) or "format_version" not in obj:
        raise CheckpointError(
            f"{path} is a torch file but not a checkpoint of this project (no 'format_version'); "
            "pass a file written by train.py, such as <run>/checkpoints/latest.pt"
        )
    version = obj["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format_version {version!r}, newer than this code's {FORMAT_VERSION}; "
            "update the code (git pull) or use a checkpoint written by this version"
        )
    missing = [key for key in required if key not in obj]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks the keys {', '.join(missing)}; it is incomplete or from another program — "
            "use a checkpoint written by train.py"
        )
    return obj


def write_checkpoint_file(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write one checkpoint dict atomically to ``path`` (no step naming, aliases or pruning: e.g. an imported model).

    Raises:
        CheckpointError: the location cannot be written; nothing is left at ``path`` (a previous file stays intact).
    """
    _check_plain(state, "state")
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(target.parent, target, lambda f: torch.save(dict(state), f))
    except OSError as err:
        raise _write_error(target, err) from None
    return target


# ---------------------------------------------------------------------------------------------------------------------
# internals


def _atomic_write(directory: Path, target: Path, write: Any) -> None:
    """Write via ``write(file)`` to a temp file in ``directory``, fsync, rename over ``target``, fsync the directory."""
    fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX + target.name + ".", dir=directory)
    try:
        os.fchmod(fd, _file_mode())  # mkstemp makes 0600; a checkpoint gets the permissions open() would give it
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        # BaseException: a second Ctrl-C in the middle of a write must not leave a half file behind either.
        _unlink_quietly(Path(tmp_name))
        raise
    _fsync_dir(directory)


def _atomic_alias(directory: Path, source: Path, alias: Path) -> None:
    """Make ``alias`` a complete copy of ``source``: hard link (no extra space) or copy, then atomic rename."""
    tmp = directory / f"{_TMP_PREFIX}{alias.name}.{os.getpid()}"
    _unlink_quietly(tmp)
    try:
        try:
            os.link(source, tmp)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise
            # Filesystems without hard links (some network/FUSE mounts): fall back to a full copy.
            _unlink_quietly(tmp)
            data = source.read_bytes()
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, alias)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(directory)


def _prune(directory: Path, keep_last: int, keep: Path) -> None:
    """Remove step files beyond the newest ``keep_last``, except ``keep`` (just written; latest.pt shares it)."""
    steps = [path for _, path in list_step_checkpoints(directory)]
    for path in steps[: max(0, len(steps) - keep_last)]:
        if path != keep:
            _unlink_quietly(path)


def _remove_stale_temps(directory: Path) -> None:
    """Delete temp files left by a process killed mid-write (only one process writes a run's checkpoints)."""
    for entry in directory.iterdir():
        if entry.name.startswith(_TMP_PREFIX):
            _unlink_quietly(entry)


def _file_mode() -> int:
    """0666 minus the process umask (read back by setting it twice; only the main thread writes checkpoints)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(directory: Path) -> None:
    """fsync a directory so a rename in it survives a power loss (not possible on every OS/filesystem; best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _write_error(target: Path, err: OSError) -> CheckpointError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return CheckpointError(
            f"disk full while writing checkpoint {target}; the previous checkpoints are intact — free space on that "
            "disk (or lower train.keep_last) or set out_dir=... to another disk, then rerun the same command to resume"
        )
    reason = err.strerror or type(err).__name__
    return CheckpointError(
        f"cannot write checkpoint {target} ({reason}); make the run directory writable or set out_dir=... elsewhere, "
        "then rerun the same command to resume"
    )


def _corrupt_error(path: Path, what: str, err: BaseException | str, fix: str) -> CheckpointError:
    detail = err if isinstance(err, str) else (str(err).splitlines()[0][:120] if str(err) else type(err).__name__)
    return CheckpointError(f"{what} {path} is truncated or corrupt ({detail}); {fix}")


def _check_plain(obj: Any, where: str) -> None:
    """Refuse (TypeError, a programming error) values that ``weights_only=True`` could not load back."""
    if isinstance(obj, torch.Tensor) or isinstance(obj, _PLAIN_SCALARS):
        return
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint {where} has a key of type {type(key).__name__}; use str or int keys")
            _check_plain(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            _check_plain(value, f"{where}[{index}]")
        return
    raise TypeError(
        f"checkpoint {where} is a {type(obj).__module__}.{type(obj).__qualname__}; store only tensors and plain "
        "containers/numbers/strings so that the file loads with weights_only=True"
    )
