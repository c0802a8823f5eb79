"""The atomic checkpoint store: round trip, pruning, failed writes, and every way a checkpoint file can be bad; the
training checkpoint schema on top of it."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from biggan import checkpoint as ckpt
from biggan.checkpoint import (
    BEST_NAME,
    FORMAT_VERSION,
    LATEST_NAME,
    find_latest,
    list_step_checkpoints,
    load_checkpoint,
    save_checkpoint,
    step_path,
)
from biggan.errors import CheckpointError
from biggan.models import load_state_strict
from biggan.training.state import REQUIRED_KEYS, read_checkpoint


def _state(step: int) -> dict:
    """A full-shaped training state with real module/optimizer state dicts."""
    torch.manual_seed(step)
    G, D = nn.Linear(4, 3), nn.Conv2d(3, 2, 3)
    opt = torch.optim.Adam(G.parameters(), lr=1e-3)
    G(torch.randn(2, 4)).sum().backward()
    opt.step()
    return {
        "format_version": FORMAT_VERSION,
        "config": {"model": {"resolution": 32, "attention": [{"res": 16, "kind": "smyrf"}]}, "seed": 0},
        "model_args": {"ch": 8},
        "step": step,
        "images_seen": step * 4,
        "best_fid": None,
        "G": G.state_dict(),
        "D": D.state_dict(),
        "G_ema": None,
        "opt_G": opt.state_dict(),
        "opt_D": torch.optim.Adam(D.parameters()).state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": (3, tuple(range(5)), None)},
        "data": {"epoch": 1, "index": 7},
        "attention_rng": {"G.attn": torch.Generator().manual_seed(1).get_state()},
    }


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def _assert_equal(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            _assert_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_equal(x, y)
    else:
        assert a == b


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message
    return message


def test_round_trip_and_latest_is_a_real_complete_file(tmp_path: Path) -> None:
    state = _state(5)
    path = save_checkpoint(state, tmp_path, step=5, keep_last=2)
    assert path == step_path(tmp_path, 5) == tmp_path / "step-00000005.pt"
    _assert_equal(load_checkpoint(path), state)
    latest = tmp_path / LATEST_NAME
    assert latest.is_file() and not latest.is_symlink()
    assert latest.read_bytes() == path.read_bytes()
    _assert_equal(load_checkpoint(latest), state)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600: other users/containers can read it


def test_keeps_last_k_and_best_survives_pruning(tmp_path: Path) -> None:
    for step in range(1, 7):
        save_checkpoint(_state(step), tmp_path, step=step, keep_last=2, best=step == 2)
    assert [s for s, _ in list_step_checkpoints(tmp_path)] == [5, 6]
    assert load_checkpoint(tmp_path / LATEST_NAME)["step"] == 6
    assert load_checkpoint(tmp_path / BEST_NAME)["step"] == 2  # its step file was pruned; best.pt still holds it
    assert find_latest(tmp_path) == tmp_path / LATEST_NAME


def test_find_latest_without_latest_file(tmp_path: Path) -> None:
    assert find_latest(tmp_path / "absent") is None
    assert find_latest(tmp_path) is None
    for step in (3, 12, 7):
        save_checkpoint(_state(step), tmp_path, step=step, keep_last=5)
    (tmp_path / LATEST_NAME).unlink()
    (tmp_path / ".tmp-step-00000099.pt.abc").write_bytes(b"half")  # a killed write is never a candidate
    assert find_latest(tmp_path) == step_path(tmp_path, 12)


def test_rewriting_a_step_after_rollback_replaces_it(tmp_path: Path) -> None:
    save_checkpoint(_state(10), tmp_path, step=10, keep_last=1)
    replacement = _state(11) | {"step": 10}
    save_checkpoint(replacement, tmp_path, step=10, keep_last=1)
    _assert_equal(load_checkpoint(tmp_path / LATEST_NAME), replacement)
    assert [s for s, _ in list_step_checkpoints(tmp_path)] == [10]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_while_writing_keeps_previous_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    save_checkpoint(_state(1), tmp_path, step=1, keep_last=1)
    before = _digest(tmp_path)
    real_save = torch.save

    def full_disk(obj: object, f: io.BufferedWriter) -> None:
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[:1000])  # part of the file reaches the disk, then the disk is full
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(_state(2), tmp_path, step=2, keep_last=1)
    message = _one_line(err)
    assert "disk full" in message and "step-00000002.pt" in message and "out_dir" in message
    assert _digest(tmp_path) == before  # no temp file left, nothing pruned, latest untouched
    assert load_checkpoint(find_latest(tmp_path))["step"] == 1


def test_disk_full_while_updating_latest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(_state(1), tmp_path, step=1, keep_last=1)
    latest_before = (tmp_path / LATEST_NAME).read_bytes()

    def no_space(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", no_space)
    with pytest.raises(CheckpointError, match="disk full"):
        save_checkpoint(_state(2), tmp_path, step=2, keep_last=1)
    assert (tmp_path / LATEST_NAME).read_bytes() == latest_before
    assert step_path(tmp_path, 1).exists()  # not pruned: the new save did not complete
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_copy_fallback_when_hard_links_are_unsupported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(*args: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    for step in (1, 2, 3):
        save_checkpoint(_state(step), tmp_path, step=step, keep_last=1, best=step == 1)
    assert load_checkpoint(tmp_path / LATEST_NAME)["step"] == 3
    assert load_checkpoint(tmp_path / BEST_NAME)["step"] == 1


def test_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(_state(1), blocker / "checkpoints", step=1, keep_last=1)
    assert "cannot write checkpoint" in _one_line(err)


def test_interrupt_during_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(_state(1), tmp_path, step=1, keep_last=3)
    before = _digest(tmp_path)

    def interrupted(obj: object, f: io.BufferedWriter) -> None:
        f.write(b"PK\x03\x04partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_state(2), tmp_path, step=2, keep_last=3)
    assert _digest(tmp_path) == before


def test_stale_temp_from_killed_writer_is_removed_by_next_save(tmp_path: Path) -> None:
    save_checkpoint(_state(1), tmp_path, step=1, keep_last=3)
    stale = tmp_path / ".tmp-step-00000002.pt.x1y2"
    stale.write_bytes(b"PK\x03\x04 half written by a process that got SIGKILL")
    save_checkpoint(_state(2), tmp_path, step=2, keep_last=3)
    assert not stale.exists()


def test_state_that_weights_only_cannot_load_is_refused_at_save(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"rng.*numpy"):
        save_checkpoint(_state(1) | {"rng": {"numpy": np.random.get_state()}}, tmp_path, step=1, keep_last=1)
    assert not list(tmp_path.iterdir())


def test_truncated_checkpoint(tmp_path: Path) -> None:
    path = save_checkpoint(_state(3), tmp_path, step=3, keep_last=1)
    data = path.read_bytes()
    for cut in (len(data) // 2, 100, 0):
        bad = tmp_path / f"cut{cut}.pt"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(bad)
        message = _one_line(err)
        assert "truncated or corrupt" in message and str(bad) in message


@pytest.mark.parametrize("seed", range(8))
def test_garbage_file(tmp_path: Path, seed: int) -> None:
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(bad)


class _RunsCode:
    """Unpickling this calls ``exec``: the classic malicious-checkpoint payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle-2", "pickle-4"])
def test_pickle_that_would_execute_code_is_refused(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "executed"
    payload = _state(1) | {"G": _RunsCode(marker)}
    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        torch.save(payload, f) if writer == "torch.save" else pickle.dump(payload, f, protocol=int(writer[-1]))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad)
    message = _one_line(err)
    assert str(bad) in message
    if writer == "pickle-4":  # torch's safe unpickler stops at the first protocol-4 opcode, before reaching the payload
        assert "truncated or corrupt" in message
    else:
        assert "references the Python object exec and was refused" in message
    assert not marker.exists()
    # Control: the payload is real (an unrestricted load runs it), so the refusal above is what protected us.
    with open(bad, "rb") as f:
        torch.load(f, weights_only=False) if writer == "torch.save" else pickle.load(f)
    assert marker.read_text() == "pwned"


def test_torch_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    other = tmp_path / "weights.pt"
    torch.save(nn.Linear(2, 2).state_dict(), other)
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_checkpoint(other)
    torch.save([torch.zeros(2)], other)
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_checkpoint(other)


def test_missing_keys_and_newer_format(tmp_path: Path) -> None:
    state = _state(1)
    del state["opt_D"], state["rng"]
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert "lacks the keys opt_D, rng" in _one_line(err)
    assert load_checkpoint(path, required=("config", "model_args", "G_ema"))["step"] == 1  # enough for sample.py
    torch.save(_state(1) | {"format_version": FORMAT_VERSION + 1}, path)
    with pytest.raises(CheckpointError, match="newer than this code"):
        load_checkpoint(path)


def test_missing_path_and_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)


def test_required_keys_match_the_contract() -> None:
    assert set(REQUIRED_KEYS) == set(_state(0))


def test_load_state_strict_names_the_first_mismatch() -> None:
    small = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    wide = nn.Sequential(nn.Linear(4, 16), nn.Linear(16, 2))
    with pytest.raises(CheckpointError) as err:
        load_state_strict(small, wide.state_dict(), "G in run/latest.pt")
    message = _one_line(err)
    assert message.startswith("G in run/latest.pt does not match the model: '0.weight' is (16, 4)")
    assert "(8, 4) in the model" in message
    with pytest.raises(CheckpointError, match="'1.bias' is missing"):
        load_state_strict(small, {k: v for k, v in small.state_dict().items() if k != "1.bias"}, "G")
    with pytest.raises(CheckpointError, match="extra key 'extra'"):
        load_state_strict(small, small.state_dict() | {"extra": torch.zeros(1)}, "G")
    source = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    load_state_strict(small, source.state_dict(), "G")
    assert torch.equal(small[0].weight, source[0].weight)
