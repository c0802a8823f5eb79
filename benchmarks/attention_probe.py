"""Cost of the tick's attention probe against a training step, side by side (BigGAN-128, ch 96, SMYRF@128 in G).

    python benchmarks/attention_probe.py [--ch 96] [--batch 2] [--steps 3] [--threads 2] [--every 100] [--out PATH]

One process builds G and D as ``benchmarks/train_step.py`` does (one class, N(0, 0.02) init, gamma 1) and alternates
one training step (1 D + 1 G update) with one ``AttentionProbe.run()`` (G and D forward on one image in eval mode,
SMYRF against chunked dense attention, maps), after a warm-up of each; reported: the medians, their ratio, and the
share of training time at one probe per ``--every`` steps (``log.every``, the tick interval; default 100).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere in the checkout

from benchmarks.train_step import attention_case, build_step  # noqa: E402
from biggan.runtime import Runtime, RuntimeConfig  # noqa: E402
from biggan.training.attention_probe import AttentionProbe  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "celebahq128_smyrf.yaml"))
    parser.add_argument("--ch", type=int, default=96)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps and probes, taken in turn")
    parser.add_argument("--every", type=int, default=100, help="training steps per tick (log.every)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.conditioning, args.set = "smyrf_repro", []
    args.n_hashes, args.q_cluster_size, args.k_cluster_size = 4, 2048, 512
    rt = Runtime.setup(RuntimeConfig(kind="cpu", threads=args.threads))
    models: dict = {}
    step = build_step("smyrf@128", args, rt, keep=models)
    attention_case("smyrf@128", args)
    probe = AttentionProbe(models["G"], models["D"], models["dim_z"], rt.device)
    times: dict[str, list[float]] = {"step": [], "probe": []}
    for i in range(args.steps + 1):  # the first of each is the warm-up
        for name, run in (("step", step), ("probe", probe.run)):
            start = time.perf_counter()
            run()
            if i:
                times[name].append(time.perf_counter() - start)
    step_s, probe_s = (statistics.median(times[k]) for k in ("step", "probe"))
    ratios = [p / s for p, s in zip(times["probe"], times["step"])]
    share = statistics.median(ratios) / args.every
    print(f"G-128 ch {args.ch}, SMYRF@128 4x2048/512, batch {args.batch}, {args.threads} threads: train step "
          f"{step_s:.2f} s, probe {probe_s:.2f} s (probe/step {statistics.median(ratios):.2f}, steps "
          f"{min(ratios):.2f}..{max(ratios):.2f}); one probe per {args.every} steps = {share:.2%} of training time "
          f"(goal <= 3%: {'met' if share <= 0.03 else 'MISSED'})")
    if args.out:
        Path(args.out).write_text(json.dumps({**vars(args), "times": times, "share": share}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
