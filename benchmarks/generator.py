"""Forward+backward time and peak memory of the BigGAN-128 generator with different attention placements.

    python benchmarks/generator.py [--batch 2] [--ch 96] [--iters 3] [--device cpu|cuda] [--threads 2] [--out PATH]

Cases (all G-128, ``zhier`` conditioning, dim_z 120, attention gamma set to 1 so the attention path is live):
dense@64 (the BigGAN ImageNet placement), dense@128 and SMYRF@128 with 4 hashes, cq 2048, ck 512 (the SMYRF CelebA-HQ
run). Each case runs in its own subprocess, so its peak belongs to it alone:
- CPU: the rise of peak RSS (VmHWM, reset through /proc/self/clear_refs after building G and one warm-up step) above
  the RSS at that point, i.e. activations + gradients of one step, not the weights; glibc's mmap threshold is fixed
  so that freed buffers leave RSS;
- CUDA: the rise of ``max_memory_allocated`` above the allocation after warm-up; timed regions are synchronised.
Time is the median of ``--iters`` steps after one warm-up step. Weights use N(0, 0.02) init (orthogonal init of the
ch=96 matrices takes minutes on a small CPU and does not change the cost of a step).

On a shared machine absolute times are noise; compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere in the checkout

from biggan.models import AttentionConfig, ModelConfig, NetworkConfig, attention_gammas, build_generator  # noqa: E402
from biggan.runtime import Runtime, RuntimeConfig  # noqa: E402

CASES = {
    "dense@64": AttentionConfig(res=64, kind="dense"),
    "dense@128": AttentionConfig(res=128, kind="dense"),
    "smyrf@128 (4x2048/512)": AttentionConfig(
        res=128, kind="smyrf", n_hashes=4, q_cluster_size=2048, k_cluster_size=512
    ),
}


def measure(case: str, batch: int, ch: int, iters: int, device: str) -> dict:
    """Time and peak memory of G forward + backward of mean(G(z)) for one attention case, in this process."""
    rt = Runtime.setup(RuntimeConfig(kind=device))  # synchronised timing and peak memory (CUDA stats or VmHWM)
    torch.manual_seed(0)
    net = NetworkConfig(ch=ch, attention=[CASES[case]])
    cfg = ModelConfig(resolution=128, dim_z=120, conditioning="zhier", init="normal", G=net)
    G = build_generator(cfg).to(rt.device).train()
    with torch.no_grad():
        for gamma in attention_gammas(G).values():
            gamma.fill_(1.0)
    z = torch.randn(batch, cfg.dim_z, device=rt.device)

    def step() -> None:
        G.zero_grad(set_to_none=True)
        G(z).mean().backward()

    step()  # warm-up: allocator pools, lazy init
    G.zero_grad(set_to_none=True)
    rt.synchronize()
    rt.reset_peak_memory()
    base = torch.cuda.memory_allocated(rt.device) if rt.kind == "cuda" else rt.peak_memory_bytes()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        rt.synchronize()
        times.append(time.perf_counter() - start)
    peak = rt.peak_memory_bytes() - base
    return {"case": case, "median_s": statistics.median(times), "times_s": times, "peak_bytes": peak}


def run_subprocess(case: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--one", case, "--batch", str(args.batch), "--ch", str(args.ch),
           "--iters", str(args.iters), "--device", args.device, "--threads", str(args.threads)]
    # Fixed mmap threshold: big tensors are mmapped and returned to the OS when freed, so RSS follows live memory
    # (glibc's dynamic threshold would otherwise keep freed warm-up buffers in the heap and hide the next peak).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"case": case, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--ch", type=int, default=96)
    parser.add_argument("--iters", type=int, default=3, help="timed steps per case (after one warm-up step)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads in every case")
    parser.add_argument("--out", default="benchmarks/results/generator.json")
    parser.add_argument("--one", choices=tuple(CASES), help=argparse.SUPPRESS)  # internal: measure one case, print JSON
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.one, args.batch, args.ch, args.iters, args.device)))
        return 0

    results = [run_subprocess(case, args) for case in CASES]
    ok = [r for r in results if "error" not in r]
    ref = ok[0] if ok else None
    print(f"G-128 forward+backward, batch {args.batch}, ch {args.ch}, {args.device}, {args.threads} threads, "
          f"torch {torch.__version__}")
    print(f"{'attention':<24}{'median s':>10}{'x dense@64':>12}{'peak MiB':>10}{'x dense@64':>12}")
    for r in results:
        if "error" in r:
            print(f"{r['case']:<24}  error: {r['error']}")
            continue
        print(f"{r['case']:<24}{r['median_s']:>10.2f}{r['median_s'] / ref['median_s']:>12.2f}"
              f"{r['peak_bytes'] / 2**20:>10.0f}{r['peak_bytes'] / ref['peak_bytes']:>12.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"batch": args.batch, "ch": args.ch, "iters": args.iters, "device": args.device, "threads": args.threads,
            "torch": torch.__version__}
    out.write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
