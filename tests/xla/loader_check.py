"""The device loader on XLA, run by tests/test_xla_loader.py with the torch-xla venv's python, ``PJRT_DEVICE=CPU`` and
``CPU_NUM_DEVICES=2`` (SPMD over two virtual devices):

    loader_check.py --out DIR     # writes DIR/loader.json

The same BatchStream (x-flips, labels, two epochs) read in the step (``data.prefetch=0``: ``shard_batch``) and ahead
(``prefetch=2``: torch-xla's ParallelLoader with the runtime's batch sharding): the batches' values, their shardings,
the consumed stream position with a full queue, an error of the host stream raised in the main thread, and the graphs
(each case's steps also use a value computed before the first batch, as the training loop's first step uses the
model's set-up: the read-ahead path runs first and the in-step path must then compile nothing new).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np
import torch

from biggan.data import BatchStream, model_input
from biggan.errors import DataError
from biggan.runtime import Runtime, RuntimeConfig


class Images:
    """24 random 8 px images; ``fail_at``: the call of get_batch that raises."""

    def __init__(self, fail_at: int | None = None) -> None:
        gen = torch.Generator().manual_seed(0)
        self.pixels = torch.randint(0, 256, (24, 3, 8, 8), generator=gen, dtype=torch.uint8)
        self.fail_at, self.calls = fail_at, 0

    def __len__(self) -> int:
        return len(self.pixels)

    def get_batch(self, indices: np.ndarray) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise DataError("image 5.png is truncated; delete it")
        return self.pixels[torch.as_tensor(indices)]  # (B, 3, 8, 8)


def _stream(dataset: Images) -> BatchStream:
    return BatchStream(dataset, 4, seed=1, xflip=True, labels=np.arange(24, dtype=np.int64) % 3)


def _reals(images, flip, labels):
    return model_input(images, flip), labels


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    out = parser.parse_args().out
    rt = Runtime.setup(RuntimeConfig(kind="xla", spmd=True))
    import torch_xla
    import torch_xla.debug.metrics as met

    def compiles() -> int:
        data = met.metric_data("CompileTime")
        return 0 if data is None else data[0]

    runs, shardings, new_compiles = {}, {}, {}
    for prefetch in (2, 0):
        stream = _stream(Images())
        loader = rt.device_loader(lambda: stream, _reals, prefetch)
        setup = torch.arange(4.0).to(rt.device) * 3  # pending (not yet executed) when the first batch is asked for
        batches, new_compiles[prefetch] = [], 0
        for _ in range(9):  # 6 batches per epoch: crosses into the second
            before = compiles()
            x, y = next(loader)
            used = x.mean() + setup.sum()
            setup = setup + 1
            rt.mark_step()
            new_compiles[prefetch] += compiles() - before  # the graphs up to the step's end, not the reads below
            batches.append((x.cpu(), y.cpu()))  # (each read of a sharded tensor compiles its own gather, every time)
            used.cpu()
        shardings[prefetch] = [torch_xla._XLAC._get_xla_sharding_spec(t) for t in (x, y)]
        if prefetch:
            deadline = time.monotonic() + 60
            while len(loader._feed._parallel._queues[rt.device].queue._items) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)  # until the device queue is full (synchronisation only)
        runs[prefetch] = (batches, stream.state_dict())
        loader.close()
    (sync, sync_state), (ahead, ahead_state) = runs[0], runs[2]
    want = _stream(Images())
    host = [_reals(*next(want)) for _ in range(9)]  # CPU eager: the values the step must see

    failing = _stream(Images(fail_at=3))
    loader = rt.device_loader(lambda: failing, _reals, 2)
    error = None
    try:
        for _ in range(4):
            next(loader)
            rt.mark_step()
    except DataError as err:
        error = str(err)
    loader.close()
    result = {
        "num_devices": rt.num_devices,
        "same_as_sync": all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(ahead, sync)),
        "max_abs_diff_vs_cpu": max(float((a - c).abs().max()) for (a, _), (c, _) in zip(ahead, host)),
        "labels_as_cpu": all(torch.equal(b, d) for (_, b), (_, d) in zip(ahead, host)),
        "sharding_sync": shardings[0], "sharding_prefetch": shardings[2],
        "consumed_position": [ahead_state["position"], sync_state["position"]],
        "new_compiles": [new_compiles[2], new_compiles[0]],
        "error": error,
        "input_threads_left": [t.name for t in threading.enumerate() if t is not threading.main_thread()
                               and t.is_alive() and not t.daemon],
    }
    (out / "loader.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
