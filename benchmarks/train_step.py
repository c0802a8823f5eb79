"""Time and peak memory of one full training step (one D update + one G update) for several attention cases.

    python benchmarks/train_step.py [--config configs/celebahq128_smyrf.yaml] [--cases dense@64 dense@128 smyrf@128]
        [--batch 2] [--ch 96] [--conditioning smyrf_repro] [--steps 3] [--rounds 2] [--warmup 1] [--device cpu|cuda]
        [--precision fp32|bf16] [--threads 2] [--set key.sub=value ...] [--out PATH]

A case is ``dense@RES`` or ``smyrf@RES`` (SMYRF with ``--n-hashes``/``--q-cluster-size``/``--k-cluster-size``,
default 4 x 2048/512): G's attention list becomes that one layer; everything else comes from ``--config`` plus the
flags. Defaults are the issue's comparison: BigGAN-128, ch 96, one class (``smyrf_repro``), batch 2.

Every measurement runs in a fresh subprocess through the trainer's ``d_step``/``g_step``, ``LeanAdam`` and the
runtime seam. Warm-up steps (allocator pools, lazy init, cuDNN autotuning) are excluded, and each timed step is closed
by a device synchronisation.
- Time: ``--rounds`` processes, each building every case and stepping them in turn (A B C A B C ..., ``--steps`` each)
  under the allocator that training runs with. A case's time is the median of its steps; a target's ratio is the
  median of the ratios of steps taken next to each other, so the load of the shared machine, which drifts by tens of
  percent within minutes, does not decide it (separate processes per case, minutes apart, gave ratios from 1.01 to
  1.27 for the same pair). Process CPU time of the same steps is reported too.
- Memory: one process per case, so its peak belongs to it alone. CPU peak is the peak RSS during one step (VmHWM after
  a reset), i.e. weights + optimiser state + activations, like the reference numbers in the README; "rise" is that peak
  minus the RSS at the reset. glibc's mmap threshold is fixed at 128 KiB there so that freed buffers leave RSS (RSS =
  live memory). That setting is kept out of the timing: every buffer over 128 KiB then becomes a fresh mapping,
  page-faulted on first touch, which slows SMYRF's many medium-sized gathers far more than convolutions. CUDA peak:
  ``max_memory_allocated``, rise above the allocation at the reset.
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
from typing import Callable, Optional

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


def build_step(case: str, args: argparse.Namespace, rt: Runtime) -> Callable[[], None]:
    """G, D and their optimisers for ``case``; returns one synchronised training step (1 D update + 1 G update)."""
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

    return step


def _runtime(args: argparse.Namespace) -> Runtime:
    return Runtime.setup(RuntimeConfig(kind=args.device, precision=args.precision, threads=args.threads))


def measure_memory(case: str, args: argparse.Namespace) -> dict:
    """Peak memory of one step of ``case`` after ``args.warmup`` steps, in this process (which holds nothing else)."""
    rt = _runtime(args)
    step = build_step(case, args, rt)
    for _ in range(args.warmup):
        step()
    rt.reset_peak_memory()
    base = torch.cuda.memory_allocated(rt.device) if rt.kind == "cuda" else rt.peak_memory_bytes()
    step()
    peak = rt.peak_memory_bytes()
    return {"case": case, "peak_bytes": peak, "rise_bytes": peak - base}


def measure_times(cases: list[str], args: argparse.Namespace) -> dict[str, dict]:
    """Wall and process CPU time of ``args.steps`` steps per case, the cases stepping in turn (A B C A B C ...) so that
    neighbouring steps of different cases see the same machine load."""
    rt = _runtime(args)
    steps = {case: build_step(case, args, rt) for case in cases}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, dict] = {case: {"times_s": [], "cpu_s": []} for case in cases}
    for _ in range(args.steps):
        for case, step in steps.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            step()
            times[case]["times_s"].append(time.perf_counter() - start)
            times[case]["cpu_s"].append(time.process_time() - cpu_start)
    return times


def run_child(argv: list[str], mode: str, case: Optional[str] = None) -> dict:
    """A fresh process measuring "memory" (one case; glibc returns every freed buffer at once, so RSS = live memory)
    or "time" (every case, with the allocator training runs with); an error becomes {"error": ...}, not an abort."""
    env = dict(os.environ)
    if mode == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    proc = subprocess.run([sys.executable, __file__, *argv, f"--child-{mode}", case or "all"], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def combine(cases: list[str], memory: list[dict], rounds: list[dict]) -> list[dict]:
    """One row per case: median wall and CPU time over every timed step of every round, per-step ratios kept for the
    targets (``paired``), and the peak and rise of the case's memory process."""
    rows = []
    for case, mem in zip(cases, memory):
        errors = [r["error"] for r in (mem, *rounds) if "error" in r]
        if errors:
            rows.append({"case": case, "error": errors[0]})
            continue
        wall = [t for r in rounds for t in r[case]["times_s"]]
        cpu = [t for r in rounds for t in r[case]["cpu_s"]]
        rows.append({"case": case, "median_s": statistics.median(wall), "median_cpu_s": statistics.median(cpu),
                     "times_s": wall, "cpu_s": cpu, "peak_bytes": mem["peak_bytes"], "rise_bytes": mem["rise_bytes"]})
    return rows


def paired_ratio(case: dict, base: dict, key: str) -> tuple[float, list[float]]:
    """case/base. Time: the median of the ratios of steps taken next to each other (the same machine load), so a
    drift in the shared machine's load between steps does not decide it. Memory: one measurement per case."""
    if key == "peak_bytes":
        return case[key] / base[key], [case[key] / base[key]]
    ratios = [c / b for c, b in zip(case["times_s"], base["times_s"])]
    return statistics.median(ratios), ratios


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
            ratio, per_round = paired_ratio(ok[case], ok[base], key)
            what = "time" if key == "median_s" else "peak"
            verdict = "met" if ratio <= limit else "MISSED"
            spread = f"steps {min(per_round):.2f}..{max(per_round):.2f}; " if len(per_round) > 1 else ""
            print(f"target: {case} {what} / {base} = {ratio:.2f} ({spread}goal <= {limit}): {verdict}")


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
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case and round")
    parser.add_argument("--rounds", type=int, default=2, help="timing processes (each steps every case in turn)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (allocator, lazy init, autotune)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("--child-memory", help=argparse.SUPPRESS)  # internal: one case's memory, one JSON line
    parser.add_argument("--child-time", help=argparse.SUPPRESS)  # internal: every case's times, one JSON line
    args, argv = parser.parse_args(), sys.argv[1:]
    if args.child_memory:
        print(json.dumps(measure_memory(args.child_memory, args)))
        return 0
    if args.child_time:
        print(json.dumps(measure_times(args.cases, args)))
        return 0
    for case in args.cases:
        attention_case(case, args)  # reject a malformed case before any subprocess starts
    memory = [run_child(argv, "memory", case) for case in args.cases]
    rounds = [run_child(argv, "time") for _ in range(args.rounds)]
    results = combine(args.cases, memory, rounds)
    report(results, args)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: v for k, v in vars(args).items() if not k.startswith("child_")}
        out.write_text(json.dumps({**meta, "torch": torch.__version__, "results": results}, indent=2) + "\n")
        print(f"wrote {out}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
