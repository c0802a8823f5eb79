"""Time and peak memory of one full training step (one D update + one G update) for several attention cases.

    python benchmarks/train_step.py [--config configs/celebahq128_smyrf.yaml] [--cases dense@64 dense@128 smyrf@128]
        [--batch 2] [--ch 96] [--conditioning smyrf_repro] [--steps 3] [--rounds 2] [--warmup 1] [--device cpu|cuda]
        [--precision fp32|bf16] [--threads 2] [--set key.sub=value ...] [--out PATH]

A case is ``dense@RES`` or ``smyrf@RES`` (SMYRF with ``--n-hashes``/``--q-cluster-size``/``--k-cluster-size``,
default 4 x 2048/512): G's attention list becomes that one layer; everything else comes from ``--config`` plus the
flags. Defaults are the issue's comparison: BigGAN-128, ch 96, one class (``smyrf_repro``), batch 2.

Cases are measured side by side (``benchmarks/side_by_side.py``) through the trainer's ``d_step``/``g_step``,
``LeanAdam`` and the runtime seam, each step closed by a device synchronisation, warm-up steps excluded:
- time: ``--rounds`` processes, each building every case and stepping them in turn, ``--steps`` steps each; a case's
  time is the median of its steps, a target's ratio the median of the ratios of neighbouring steps; process CPU time
  of the same steps is reported too;
- memory: one process per case. CPU peak is the peak RSS during one step with RSS following live memory, i.e.
  weights + optimiser state + activations, like the reference numbers in the README; "rise" is the peak above the
  memory before that step. CUDA: ``max_memory_allocated``.
Weights use N(0, 0.02) init: orthogonal init of the ch=96 matrices takes minutes on a small CPU and costs nothing per
step. Attention gamma is set to 1 so the attention path is live in backward. On a shared machine compare ratios
within one run, never absolute times.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere in the checkout

from benchmarks.side_by_side import combine, paired_ratio, peak_of, run_child, times_in_turn  # noqa: E402
from biggan.training.config import load_config  # noqa: E402
from biggan.models import AttentionConfig, attention_gammas, build_discriminator, build_generator  # noqa: E402
from biggan.runtime import Runtime, RuntimeConfig  # noqa: E402
from biggan.training.losses import hinge_d, hinge_g  # noqa: E402
from biggan.training.optimizer import LeanAdam  # noqa: E402
from biggan.training.steps import StepContext, d_step, g_step  # noqa: E402

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


def build_step(case: str, args: argparse.Namespace, rt: Runtime, keep: dict | None = None) -> Callable[[], None]:
    """G, D and their optimisers for ``case``; returns one synchronised training step (1 D update + 1 G update).
    ``keep`` receives the unwrapped G, D and dim_z (for benchmarks that also probe the networks)."""
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
    if keep is not None:
        keep.update(G=rt.unwrap(G), D=rt.unwrap(D), dim_z=cfg.dim_z)
    opt_G = LeanAdam(G.parameters(), lr=5e-5, betas=(0.0, 0.999), eps=1e-6)  # the trainer's optimiser
    opt_D = LeanAdam(D.parameters(), lr=2e-4, betas=(0.0, 0.999), eps=1e-6)
    gen = torch.Generator().manual_seed(0)
    ctx = StepContext(rt.optimizer_step, rt.autocast)

    def step() -> None:
        x_real = rt.shard_batch(torch.rand(args.batch, 3, cfg.resolution, cfg.resolution, generator=gen) * 2 - 1)
        z_d = rt.shard_batch(torch.randn(args.batch, cfg.dim_z, generator=gen))
        z_g = rt.shard_batch(torch.randn(args.batch, cfg.dim_z, generator=gen))
        d_step(G, D, opt_D, x_real=x_real, z=z_d, loss=hinge_d, ctx=ctx)
        rt.mark_step()
        g_step(G, rt.unwrap(D), opt_G, z=z_g, loss=hinge_g, ctx=ctx)
        rt.mark_step()
        rt.synchronize()

    return step


def _runtime(args: argparse.Namespace) -> Runtime:
    return Runtime.setup(RuntimeConfig(kind=args.device, precision=args.precision, threads=args.threads))


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
        x_time, x_cpu = (paired_ratio(r, ref, key)[0] for key in ("median_s", "median_cpu_s"))
        print(f"{r['case']:<12}{r['median_s']:>10.3f}{x_time:>8.2f}{r['median_cpu_s']:>9.2f}{x_cpu:>7.2f}"
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
        rt = _runtime(args)
        print(json.dumps(peak_of(build_step(args.child_memory, args, rt), rt, args.warmup)))
        return 0
    if args.child_time:
        rt = _runtime(args)
        steps = {case: build_step(case, args, rt) for case in args.cases}
        print(json.dumps(times_in_turn(steps, rt, args.steps, args.warmup)))
        return 0
    for case in args.cases:
        attention_case(case, args)  # reject a malformed case before any subprocess starts
    memory = [run_child(__file__, argv, "memory", case) for case in args.cases]
    rounds = [run_child(__file__, argv, "time") for _ in range(args.rounds)]
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
