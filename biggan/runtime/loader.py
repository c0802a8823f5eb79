"""Host batches to the device, read ahead in the background: :class:`DeviceLoader` (built by ``Runtime.device_loader``).

The host stream (the data's ``BatchStream``) is anything with this protocol: ``next(stream)`` -> a tuple of CPU tensors
(or None in a slot it does not fill), ``fork()`` -> an independent stream at the same place, ``skip()`` -> move past one
batch without reading it, ``state_dict()`` -> where it is. ``source()`` returns the stream the step consumes from now
(the training state replaces it on resume and on a divergence rollback's re-seed).

``prefetch`` = N > 0: a feed reads a ``fork()`` of the stream up to N batches ahead while the step runs; the consumed
stream only ``skip()``s, so it always stands at the batches the step has taken and its ``state_dict`` is what a
checkpoint saves, however full the queue. When ``source()`` is another stream, or the stream moved in another way
(``load_state_dict``, re-seeding), the feed is dropped and restarted from there, so the batches stay a pure function of
the stream's (seed, epoch, position). Feeds by device kind:

* cpu / cuda: one daemon thread and a queue of N; on CUDA it copies each batch into pinned memory, so the step's
  ``.to(device, non_blocking=True)`` (``Runtime.shard_batch``) is an asynchronous DMA that returns at once. The copy
  stays on the compute stream: a uint8 256² batch of 32 is 6.3 MB, about 0.3 ms at PCIe-4 rates (an estimate, not
  measured), not worth a second stream.
* xla: torch-xla's ``ParallelLoader`` (what ``MpDeviceLoader`` wraps; used directly for its ``close``), N batches ahead
  on the host and N on the device, each input placed with the runtime's ``batch_sharding`` (dim 0 over the ``data``
  mesh axis under SPMD).

``prefetch`` = 0: the batch is read and placed in the step, on the calling thread (the path before this file).
In every case ``on_device(*placed)`` then runs on the device (e.g. ``biggan.data.model_input``) and its result is the
loader's batch. An exception in a feed's thread is raised again, the same object, by the ``next`` that wanted its batch.
:meth:`DeviceLoader.close` stops the feed (the trainer calls it at the end of a run, on errors and on preemption); the
threads are daemons, so even an unclosed loader never holds up the interpreter's exit.
"""

from __future__ import annotations

import itertools
import queue
import sys
import threading
from typing import Any, Callable, Iterator, Optional

import torch

__all__ = ["DeviceLoader"]

_POLL_SECONDS = 0.1  # how often a blocked put/get looks at the stop flag and the thread's health
_JOIN_SECONDS = 10.0  # close waits this long for a batch in progress (a slow folder decode), then leaves the daemon


def _place_all(place: Callable[[torch.Tensor], torch.Tensor], batch: tuple) -> tuple:
    return tuple(None if t is None else place(t) for t in batch)


class DeviceLoader:
    """``next(loader)`` -> ``on_device(*batch)`` with the consumed stream's next batch on the device."""

    def __init__(self, runtime: Any, source: Callable[[], Any], on_device: Callable[..., Any], prefetch: int) -> None:
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.runtime, self.prefetch = runtime, prefetch
        self._source, self._on_device = source, on_device
        self._feed: Optional[_ThreadFeed | _XlaFeed] = None
        self._stream: Any = None  # the consumed stream the feed was forked from
        self._expected: Any = None  # its state_dict after the last batch taken: anything else means it was moved

    def __iter__(self) -> DeviceLoader:
        return self

    def __next__(self) -> Any:
        stream = self._source()
        if self.prefetch == 0:
            return self._on_device(*_place_all(self.runtime.shard_batch, next(stream)))
        if self._feed is None or stream is not self._stream or stream.state_dict() != self._expected:
            self._start(stream)
        batch = self._feed.next()
        stream.skip()
        self._expected = stream.state_dict()
        return self._on_device(*batch)

    def _start(self, stream: Any) -> None:
        self.close()
        rt = self.runtime
        if rt.kind == "xla":
            self._feed = _XlaFeed(rt, stream.fork(), self.prefetch)
        else:
            pin = (lambda t: t.pin_memory()) if rt.kind == "cuda" else None
            self._feed = _ThreadFeed(stream.fork(), self.prefetch, pin, rt.shard_batch)
        self._stream, self._expected = stream, stream.state_dict()

    def close(self) -> None:
        """Stop the feed's threads (idempotent; the next batch starts a new feed)."""
        feed, self._feed = self._feed, None
        if feed is not None:
            feed.close()


class _ThreadFeed:
    """A daemon thread reading ``stream`` into a queue of ``depth`` host batches (pinned by ``pin``)."""

    def __init__(self, stream: Iterator[tuple], depth: int, pin: Optional[Callable[[torch.Tensor], torch.Tensor]],
                 place: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._place = place
        self._thread = threading.Thread(target=self._produce, args=(stream, pin), name="biggan-input", daemon=True)
        self._thread.start()

    def _produce(self, stream: Iterator[tuple], pin: Optional[Callable[[torch.Tensor], torch.Tensor]]) -> None:
        try:
            while not self._stop.is_set():
                batch = next(stream)
                self._put((batch if pin is None else _place_all(pin, batch), None))
        except BaseException as err:  # handed to the main thread, which raises it
            self._put((None, err))

    def _put(self, item: tuple) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def next(self) -> tuple:
        while True:
            try:
                batch, err = self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if not self._thread.is_alive():
                    raise RuntimeError("the input thread stopped without handing over a batch") from None
                continue
            if err is not None:
                raise err
            return _place_all(self._place, batch)  # non-blocking copies from pinned memory on CUDA

    def close(self) -> None:
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()  # frees the pinned buffers and any put waiting for room
        except queue.Empty:
            pass
        self._thread.join(timeout=_JOIN_SECONDS)


class _Guarded:
    """The host stream as the iterable ParallelLoader reads: dicts of the filled slots; an exception ends it and is kept
    (ParallelLoader's reading thread would only print it and end the batches)."""

    def __init__(self, batches: Iterator[tuple], keys: list[str]) -> None:
        self.batches, self.keys, self.error = batches, keys, None

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            try:
                batch = next(self.batches)
            except BaseException as err:
                self.error = err
                return
            yield dict(zip(self.keys, (t for t in batch if t is not None)))


class _XlaFeed:
    """torch-xla's ParallelLoader over ``stream``: host and device queues of ``depth``, inputs placed with the runtime's
    batch sharding. The first batch is read here, to learn which slots are filled and their ranks (the specs)."""

    def __init__(self, runtime: Any, stream: Iterator[tuple], depth: int) -> None:
        import torch_xla.distributed.parallel_loader as pl

        first = next(stream)
        self._filled = [t is not None for t in first]
        self._keys = [str(i) for i, t in enumerate(first) if t is not None]
        present = [t for t in first if t is not None]
        specs = {key: runtime.batch_sharding(t.dim()) for key, t in zip(self._keys, present)}
        sharding = specs if all(spec is not None for spec in specs.values()) else None
        self._host = _Guarded(itertools.chain([first], stream), self._keys)
        # batches_per_execution: the step cuts its own graphs (Runtime.mark_step); at the default of 1 the loader calls
        # torch_xla.sync() before every batch, which split pending work into graphs of its own: 13 compiles instead
        # of 11 in 3 steps of train.py on the demo (XLA:CPU, 2 devices).
        self._parallel = pl.ParallelLoader(self._host, [runtime.device], loader_prefetch_size=depth,
                                           device_prefetch_size=depth, input_sharding=sharding,
                                           batches_per_execution=sys.maxsize)
        self._batches = self._parallel.per_device_loader(runtime.device)

    def next(self) -> tuple:
        try:
            item = next(self._batches)
        except StopIteration:
            raise self._host.error or RuntimeError("the input stream ended") from None
        placed = iter([item[key] for key in self._keys])
        return tuple(next(placed) if filled else None for filled in self._filled)

    def close(self) -> None:
        self._parallel.close()
