"""Time and peak memory of one full training step (one D update + one G update) for several attention cases.

    python benchmarks/train_step.py [--config configs/celebahq128_smyrf.yaml] [--cases dense@64 dense@128 smyrf@128]
        [--batch 2] [--ch 96] [--conditioning smyrf_repro] [--steps 3] [--warmup 1] [--device cpu|cuda]
        [--precision fp32|bf16] [--threads 2] [--set key.sub=value ...] [--out PATH]

A case is ``dense@RES`` or ``smyrf@RES`` (SMYRF with ``--n-hashes``/``--q-cluster-size``/``--k-cluster-size``,
default 4 x 2048/512): G's attention list becomes that one layer; everything else comes from ``--config`` plus the
flags. Defaults are the issue's comparison: BigGAN-128, ch 96, one class (``smyrf_repro``), batch 2.

Each case runs in its own subprocess (so its peak belongs to it alone) through the trainer's ``d_step``/``g_step`` and
the runtime seam. Warm-up steps (allocator pools, lazy init, cuDNN autotuning) are excluded: the peak is reset after
them and time is the median of the timed steps, each closed by a device synchronisation. The process CPU time of the
same steps is reported too: on a busy shared CPU machine it is distorted less than wall time.
- CPU peak: the process's peak RSS during the timed steps (VmHWM after a reset), i.e. weights + optimiser state +
  activations, like the reference numbers in the README; "rise" is that peak minus the RSS at the reset. glibc's mmap
  threshold is fixed so that freed buffers leave RSS.
- CUDA peak: ``max_memory_allocated`` during the timed steps; "rise" is above the allocation at the reset.
Weights use N(0, 0.02) init: orthogonal init of the ch=96 matrices takes minutes on a small CPU and costs nothing per
step. Attention gamma is set to 1 so the attention path is live in backward. On a shared machine compare ratios
within one run, never absolute times.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere in the checkout

from biggan.config import load_config  # noqa: E402
from biggan.models import AttentionConfig, attention_gammas, build_discriminator, build_generator  # noqa: E402
from biggan.runtime import Runtime, RuntimeConfig  # noqa: E402
from biggan.training.losses import hinge_d, hinge_g  # noqa: E402
from biggan.training.optimizer import LeanAdam  # noqa: E402
from biggan.training.steps import d_step, g_step  # noqa: E402

TARGETS = (  # (case, baseline, quantity, at most): the goals for SMYRF@128 at 128/ch 96/batch 2 on CPU
    ("smyrf@128", "dense@64", "median_s", 1.15),
    ("smyrf@128", "dense@64", "peak_bytes", 1.05),
    ("smyrf@128", "dense@128", "peak_bytes", 0.75),
)


def attention_case(case: str, args: argparse.Namespace) -> AttentionConfig:
    kind, _, res = case.partition("@")
    if kind not in ("dense", "smyrf") or not res.isdigit():
        raise SystemExit(f"error: case {case!r} must look like dense@64 or smyrf@128")
    if kind == "dense":
        return AttentionConfig(res=int(res), kind="dense")
    return AttentionConfig(res=int(res), kind="smyrf", n_hashes=args.n_hashes, q_cluster_size=args.q_cluster_size,
                           k_cluster_size=args.k_cluster_size)


def measure(case: str, args: argparse.Namespace) -> dict:
    """Build G and D for ``case`` and time ``args.steps`` D+G steps after ``args.warmup``, in this process."""
    rt = Runtime.setup(RuntimeConfig(kind=args.device, precision=args.precision, threads=args.threads))
    overrides = [f"model.conditioning={args.conditioning}", "model.init=normal", *args.set]
    if args.ch:
        overrides += [f"model.G.ch={args.ch}", f"model.D.ch={args.ch}"]
    cfg = load_config(args.config, overrides).model
    cfg.G.attention = [attention_case(case, args)]
    torch.manual_seed(0)
    G, D = rt.wrap_model(build_generator(cfg)), rt.wrap_model(build_discriminator(cfg))
    with torch.no_grad():
        for gamma in attention_gammas(rt.unwrap(G)).values():
            gamma.fill_(1.0)
    opt_G = LeanAdam(G.parameters(), lr=5e-5, betas=(0.0, 0.999), eps=1e-6)  # the trainer's optimiser
    opt_D = LeanAdam(D.parameters(), lr=2e-4, betas=(0.0, 0.999), eps=1e-6)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        x_real = rt.shard_batch(torch.rand(args.batch, 3, cfg.resolution, cfg.resolution, generator=gen) * 2 - 1)
        z_d = rt.shard_batch(torch.randn(args.batch, cfg.dim_z, generator=gen))
        z_g = rt.shard_batch(torch.randn(args.batch, cfg.dim_z, generator=gen))
        d_step(G, D, opt_D, x_real, z_d, None, hinge_d, rt.optimizer_step, rt.autocast)
        rt.mark_step()
        g_step(G, rt.unwrap(D), opt_G, z_g, None, hinge_g, rt.optimizer_step, rt.autocast)
        rt.mark_step()
        rt.synchronize()

    for _ in range(args.warmup):
        step()
    opt_G.zero_grad(set_to_none=True), opt_D.zero_grad(set_to_none=True)
    rt.synchronize()
    rt.reset_peak_memory()
    base = torch.cuda.memory_allocated(rt.device) if rt.kind == "cuda" else rt.peak_memory_bytes()
    times, cpu_times = [], []
    for _ in range(args.steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    peak = rt.peak_memory_bytes()
    return {"case": case, "median_s": statistics.median(times), "times_s": times,
            "median_cpu_s": statistics.median(cpu_times), "peak_bytes": peak, "rise_bytes": peak - base}


def run_case(case: str, args: argparse.Namespace, argv: list[str]) -> dict:
    """``measure`` in a fresh subprocess; an error becomes a row, not an abort of the whole table."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}  # big freed buffers go back to the OS (RSS = live)
    proc = subprocess.run([sys.executable, __file__, *argv, "--one", case], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"case": case, "error": lines[-1] if lines else f"exit status {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(results: list[dict], args: argparse.Namespace) -> None:
    ok = {r["case"]: r for r in results if "error" not in r}
    ref = next(iter(ok.values()), None)
    print(f"train step (1 D + 1 G), config {args.config}, batch {args.batch}, ch {args.ch or 'from config'}, "
          f"{args.conditioning}, {args.device} {args.precision}, {args.threads or 'default'} threads, "
          f"torch {torch.__version__}; ratios vs {ref['case'] if ref else '-'}")
    print(f"{'case':<12}{'median s':>10}{'x time':>8}{'cpu s':>9}{'x cpu':>7}{'peak GiB':>10}{'x peak':>8}"
          f"{'rise GiB':>10}")
    for r in results:
        if "error" in r:
            print(f"{r['case']:<12}  error: {r['error']}")
            continue
        print(f"{r['case']:<12}{r['median_s']:>10.3f}{r['median_s'] / ref['median_s']:>8.2f}"
              f"{r['median_cpu_s']:>9.2f}{r['median_cpu_s'] / ref['median_cpu_s']:>7.2f}"
              f"{r['peak_bytes'] / 2**30:>10.2f}{r['peak_bytes'] / ref['peak_bytes']:>8.2f}"
              f"{r['rise_bytes'] / 2**30:>10.2f}")
    for case, base, key, limit in TARGETS:
        if case in ok and base in ok:
            ratio = ok[case][key] / ok[base][key]
            what = "time" if key == "median_s" else "peak"
            verdict = "met" if ratio <= limit else "MISSED"
            print(f"target: {case} {what} / {base} = {ratio:.2f} (goal <= {limit}): {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "celebahq128_smyrf.yaml"))
    parser.add_argument("--cases", nargs="+", default=["dense@64", "dense@128", "smyrf@128"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--ch", type=int, default=96, help="G and D width (0: keep the config's)")
    parser.add_argument("--conditioning", default="smyrf_repro", help="model.conditioning (default: one class)")
    parser.add_argument("--n-hashes", type=int, default=4)
    parser.add_argument("--q-cluster-size", type=int, default=2048)
    parser.add_argument("--k-cluster-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (allocator, lazy init, autotune)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one case, print one JSON line
    args, argv = parser.parse_args(), sys.argv[1:]
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return 0
    for case in args.cases:
        attention_case(case, args)  # reject a malformed case before any subprocess starts
    results = [run_case(case, args, argv) for case in args.cases]
    report(results, args)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: v for k, v in vars(args).items() if k != "one"}
        out.write_text(json.dumps({**meta, "torch": torch.__version__, "results": results}, indent=2) + "\n")
        print(f"wrote {out}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
