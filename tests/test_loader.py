"""The device loader (biggan.runtime.loader) on the CPU runtime: read-ahead batches equal the synchronous ones, the
consumed position is what a checkpoint sees, moved or replaced streams restart the feed, worker errors surface in the
step, and the thread stops (close, errors, interpreter exit). The pinned-memory CUDA copy needs a GPU (not run here)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from biggan.data import BatchStream, model_input
from biggan.errors import DataError
from biggan.runtime import Runtime, RuntimeConfig

ROOT = Path(__file__).resolve().parents[1]


class Indexed:
    """Image i is filled with the value i (so a batch tells which images it holds); ``fail_at``: raise on that call."""

    def __init__(self, n: int, res: int = 4, fail_at: int | None = None):
        self.n, self.res, self.fail_at, self.calls = n, res, fail_at, 0

    def __len__(self):
        return self.n

    def get_batch(self, indices):
        self.calls += 1
        if self.calls == self.fail_at:
            raise DataError("image 17.png is truncated; delete it or pass --skip-bad")
        idx = torch.as_tensor(np.asarray(indices) + np.arange(len(indices)) % 2 * 100, dtype=torch.uint8)
        images = idx[:, None, None, None].expand(-1, 3, self.res, self.res).clone()  # (B, 3, res, res)
        images[:, :, :, 0] = 255  # an asymmetric column: a flip shows
        return images


def _reals(images, flip, labels):
    return model_input(images, flip), labels


@pytest.fixture(scope="module")
def rt() -> Runtime:
    return Runtime.setup(RuntimeConfig(kind="cpu"))


def _stream(n: int = 40, **kwargs) -> BatchStream:
    labels = np.arange(n, dtype=np.int64) % 5
    return BatchStream(kwargs.pop("dataset", Indexed(n)), 8, seed=kwargs.pop("seed", 3), xflip=True, labels=labels,
                       **kwargs)


def _take(loader, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(loader) for _ in range(k)]


def _equal(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))


def _input_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "biggan-input" and t.is_alive()]


@pytest.mark.parametrize("prefetch", [1, 3])
def test_read_ahead_gives_the_synchronous_batches(rt, prefetch):
    sync_stream, ahead_stream = _stream(), _stream()
    sync = rt.device_loader(lambda: sync_stream, _reals, prefetch=0)
    ahead = rt.device_loader(lambda: ahead_stream, _reals, prefetch=prefetch)
    try:
        want = _take(sync, 12)  # 5 batches per epoch: crosses two epochs
        assert _equal(_take(ahead, 12), want)
        assert want[0][0].dtype == torch.float32 and want[0][1].dtype == torch.int64
    finally:
        ahead.close()


def _wait_full(loader) -> None:
    """Until the feed's queue holds its ``prefetch`` batches (synchronisation, not timing: the thread fills it)."""
    feed = loader._feed
    while not feed._queue.full():
        assert feed._thread.is_alive()
        threading.Event().wait(0.01)


def test_checkpoint_with_a_full_queue_resumes_at_the_consumed_batch(rt):
    """The stream a checkpoint saves stands at the batches the step took, not at those read ahead; a resumed run then
    takes exactly the batches of an uninterrupted one."""
    uninterrupted_stream = _stream()
    want = _take(rt.device_loader(lambda: uninterrupted_stream, _reals, prefetch=0), 10)

    stream = _stream()
    loader = rt.device_loader(lambda: stream, _reals, prefetch=3)
    try:
        first = _take(loader, 4)
        _wait_full(loader)  # 3 more batches read, and the fork is further still
        saved = stream.state_dict()
        assert (saved["epoch"], saved["position"]) == (0, 4)  # consumed: 4 of 5 in epoch 0
    finally:
        loader.close()
    resumed_stream = _stream()
    resumed_stream.load_state_dict(saved)
    resumed = rt.device_loader(lambda: resumed_stream, _reals, prefetch=3)
    try:
        assert _equal(first + _take(resumed, 6), want)
    finally:
        resumed.close()


def test_a_moved_or_replaced_stream_restarts_the_feed(rt):
    """A rollback loads an older position into the stream and re-seeds it (a new object): the read-ahead is dropped and
    the batches follow the stream the step consumes."""
    holder = {"stream": _stream()}
    loader = rt.device_loader(lambda: holder["stream"], _reals, prefetch=2)
    try:
        start = _stream().state_dict()
        _take(loader, 3)
        holder["stream"].load_state_dict(start)  # moved in place (resume / rollback to an older checkpoint)
        again = _stream()
        assert _equal(_take(loader, 2), _take(rt.device_loader(lambda: again, _reals, 0), 2))
        holder["stream"] = holder["stream"].reseeded(9)  # divergence retry: another data order from here
        other = _stream(seed=9)
        other.load_state_dict(holder["stream"].state_dict())
        assert _equal(_take(loader, 3), _take(rt.device_loader(lambda: other, _reals, 0), 3))
    finally:
        loader.close()
    assert not _input_threads()


def test_an_error_in_the_input_thread_is_raised_in_the_step(rt):
    stream = _stream(dataset=Indexed(40, fail_at=3))
    loader = rt.device_loader(lambda: stream, _reals, prefetch=2)
    try:
        _take(loader, 2)
        with pytest.raises(DataError, match=r"image 17\.png is truncated; delete it"):
            next(loader)
    finally:
        loader.close()
    assert not _input_threads()


def test_close_stops_a_thread_blocked_on_a_full_queue(rt):
    stream = _stream()
    loader = rt.device_loader(lambda: stream, _reals, prefetch=1)
    next(loader)
    _wait_full(loader)  # the thread now waits for room
    assert _input_threads()
    loader.close()
    loader.close()  # idempotent
    assert not _input_threads()


def test_an_unclosed_loader_does_not_hold_up_exit():
    """A run that dies with the queue full (no close) still exits: the thread is a daemon."""
    code = (
        "import numpy as np, torch\n"
        "from biggan.data import BatchStream, model_input\n"
        "from biggan.runtime import Runtime, RuntimeConfig\n"
        "class D:\n"
        "    def __len__(self): return 64\n"
        "    def get_batch(self, i): return torch.zeros(len(i), 3, 4, 4, dtype=torch.uint8)\n"
        "s = BatchStream(D(), 8, seed=0)\n"
        "loader = Runtime.setup(RuntimeConfig(kind='cpu')).device_loader(lambda: s, lambda x, f, y: x, 2)\n"
        "next(loader)\n"
        "raise SystemExit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
