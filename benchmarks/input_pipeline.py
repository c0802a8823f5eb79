"""Per-step data time of the input pipeline, read in the step (``data.prefetch=0``) against read ahead (``prefetch=N``).

    python benchmarks/input_pipeline.py [--res 256] [--batch 32] [--images 256] [--prefetch 2] [--steps 12]
                                        [--rounds 3] [--step-ms 40] [--threads 1] [--out PATH]

A prepared (memmap) dataset of ``--images`` random uint8 images is written to a temporary directory; one process
builds both loaders (``Runtime.device_loader`` over a ``BatchStream`` with x-flips, ``model_input`` on the device, the
training loop's path) and takes ``--steps`` steps with each in turn, ``--rounds`` times, with a simulated training
step after every batch: ``sleep`` (the device busy, the host free: the best case for overlap) and ``matmul`` (host
compute of about ``--step-ms`` on ``--threads`` threads, sharing the CPU with the input thread). Per step it times the
wait for the placed uint8 batch (``next(loader)`` + a device synchronize: the memmap gather, flip mask and copy, which
a read-ahead hides), ``model_input`` on the device (on the CPU runtime that is host work on the main thread, in both
cases; on a GPU a few elementwise kernels) and the whole step; the first 3 steps of a round are
dropped (a prefetching queue filled during the other case's round would flatter it). Reported: medians per case and
the ratio prefetch / in-step, side by side. The memmap is in the page cache after the first pass, as a prepared
dataset smaller than RAM is during training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere in the checkout

from biggan.data import BatchStream, PreparedDataset, model_input  # noqa: E402
from biggan.data.prepared import PreparedWriter  # noqa: E402
from biggan.runtime import Runtime, RuntimeConfig  # noqa: E402

_WARM_STEPS = 3  # dropped at the start of every round


def write_dataset(root: Path, res: int, count: int) -> PreparedDataset:
    """``count`` random uint8 (3, res, res) images in the prepared format under ``root``."""
    rng = np.random.default_rng(0)
    writer = PreparedWriter(root / str(res), res, count)
    for _ in range(count):
        writer.append(rng.integers(0, 256, (3, res, res), dtype=np.uint8))
    writer.finish()
    writer.commit({"source": {"form": "benchmark"}, "filter": "box"})
    return PreparedDataset(root, res)


def simulated_step(kind: str, step_ms: float) -> callable:
    """A stand-in for the training step: a sleep of ``step_ms``, or matmuls sized to take about that long."""
    if kind == "sleep":
        return lambda x: time.sleep(step_ms / 1000)
    a = torch.randn(512, 512)
    start = time.perf_counter()
    for _ in range(5):
        a @ a
    reps = max(1, round(step_ms / 1000 / ((time.perf_counter() - start) / 5)))

    def step(x: torch.Tensor) -> None:
        for _ in range(reps):
            a @ a
        x.sum()  # uses the batch

    return step


def measure(rt: Runtime, dataset: PreparedDataset, args: argparse.Namespace, kind: str) -> dict:
    step = simulated_step(kind, args.step_ms)
    loaders = {}
    for name, prefetch in (("in_step", 0), (f"prefetch{args.prefetch}", args.prefetch)):
        stream = BatchStream(dataset, args.batch, seed=0, xflip=True)
        loaders[name] = rt.device_loader(lambda s=stream: s, lambda images, flip, labels: (images, flip), prefetch)
    times = {name: {"read_s": [], "transform_s": [], "step_s": []} for name in loaders}
    try:
        for _ in range(args.rounds):
            for name, loader in loaders.items():
                for i in range(_WARM_STEPS + args.steps):
                    start = time.perf_counter()
                    images, flip = next(loader)  # (B, 3, res, res) uint8, (B,) bool on the device
                    rt.synchronize()
                    read = time.perf_counter()
                    x = model_input(images, flip)  # (B, 3, res, res) float in [-1, 1]
                    rt.synchronize()
                    made = time.perf_counter()
                    step(x)
                    rt.synchronize()
                    if i >= _WARM_STEPS:
                        times[name]["read_s"].append(read - start)
                        times[name]["transform_s"].append(made - read)
                        times[name]["step_s"].append(time.perf_counter() - start)
    finally:
        for loader in loaders.values():
            loader.close()
    rows = {name: {key: statistics.median(values) for key, values in t.items()} for name, t in times.items()}
    base, ahead = rows["in_step"], rows[f"prefetch{args.prefetch}"]
    return {"step": kind, "cases": rows, "ratio_read": ahead["read_s"] / base["read_s"],
            "ratio_transform": ahead["transform_s"] / base["transform_s"],
            "ratio_step": ahead["step_s"] / base["step_s"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--res", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per case and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--step-ms", type=float, default=40.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the simulated step")
    parser.add_argument("--steps-kind", nargs="+", default=["sleep", "matmul"], choices=["sleep", "matmul"])
    parser.add_argument("--runtime", default="auto", help="runtime.kind (auto: cuda when there is one)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rt = Runtime.setup(RuntimeConfig(kind=args.runtime))
    with tempfile.TemporaryDirectory() as tmp:
        dataset = write_dataset(Path(tmp), args.res, args.images)
        results = [measure(rt, dataset, args, kind) for kind in args.steps_kind]
    print(f"input pipeline, {rt.kind}, {args.res}² batch {args.batch}, x-flip, simulated step {args.step_ms:g} ms; "
          f"medians of {args.rounds}x{args.steps} steps per case")
    print(f"{'step':8s} {'case':12s} {'read ms':>9s} {'model_input ms':>15s} {'step ms':>9s}")
    for r in results:
        for name, row in r["cases"].items():
            print(f"{r['step']:8s} {name:12s} {row['read_s'] * 1e3:9.2f} {row['transform_s'] * 1e3:15.2f} "
                  f"{row['step_s'] * 1e3:9.2f}")
        print(f"{r['step']:8s} {'ratio':12s} {r['ratio_read']:8.3f}x {r['ratio_transform']:14.3f}x "
              f"{r['ratio_step']:8.3f}x   (prefetch / in-step)")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "device": rt.kind, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
