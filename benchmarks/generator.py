"""Forward+backward time and peak memory of the BigGAN-128 generator with different attention placements.

    python benchmarks/generator.py [--batch 2] [--ch 96] [--steps 3] [--rounds 2] [--device cpu|cuda] [--threads 2]
        [--out PATH]

Cases (all G-128, ``zhier`` conditioning, dim_z 120, attention gamma set to 1 so the attention path is live):
dense@64 (the BigGAN ImageNet placement), dense@128 and SMYRF@128 with 4 hashes, cq 2048, ck 512 (the SMYRF CelebA-HQ
run), measured side by side (``benchmarks/side_by_side.py``): memory in one process per case, as the rise of the peak
above the memory after building G and one warm-up step (activations + gradients of one step, not the weights); time
from ``--rounds`` processes stepping the cases in turn, the ratio being the median of ratios of neighbouring steps.
Weights use N(0, 0.02) init (orthogonal init of the ch=96 matrices takes minutes on a small CPU and does not change the
cost of a step). On a shared machine absolute times are noise; compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere in the checkout

from benchmarks.side_by_side import combine, paired_ratio, peak_of, run_child, times_in_turn  # noqa: E402
from biggan.models import AttentionConfig, ModelConfig, NetworkConfig, attention_gammas, build_generator  # noqa: E402
from biggan.runtime import Runtime, RuntimeConfig  # noqa: E402

CASES = {
    "dense@64": AttentionConfig(res=64, kind="dense"),
    "dense@128": AttentionConfig(res=128, kind="dense"),
    "smyrf@128 (4x2048/512)": AttentionConfig(
        res=128, kind="smyrf", n_hashes=4, q_cluster_size=2048, k_cluster_size=512
    ),
}


def build_step(case: str, args: argparse.Namespace, rt: Runtime) -> Callable[[], None]:
    """G-128 for ``case``; returns one forward + backward of mean(G(z)), synchronised."""
    torch.manual_seed(0)
    net = NetworkConfig(ch=args.ch, attention=[CASES[case]])
    cfg = ModelConfig(resolution=128, dim_z=120, conditioning="zhier", init="normal", G=net)
    G = build_generator(cfg).to(rt.device).train()
    with torch.no_grad():
        for gamma in attention_gammas(G).values():
            gamma.fill_(1.0)
    z = torch.randn(args.batch, cfg.dim_z, device=rt.device)

    def step() -> None:
        G.zero_grad(set_to_none=True)
        G(z).mean().backward()
        G.zero_grad(set_to_none=True)  # the peak is the step's; its gradients are not kept between steps
        rt.synchronize()

    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--ch", type=int, default=96)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case and round")
    parser.add_argument("--rounds", type=int, default=2, help="timing processes (each steps every case in turn)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads in every case")
    parser.add_argument("--out", default="benchmarks/results/generator.json")
    parser.add_argument("--child-memory", choices=tuple(CASES), help=argparse.SUPPRESS)  # internal: one case's peak
    parser.add_argument("--child-time", help=argparse.SUPPRESS)  # internal: every case's step times
    args, argv = parser.parse_args(), sys.argv[1:]
    if args.child_memory or args.child_time:
        rt = Runtime.setup(RuntimeConfig(kind=args.device, threads=args.threads))
        if args.child_memory:
            result = peak_of(build_step(args.child_memory, args, rt), rt, warmup=1)
        else:
            result = times_in_turn({case: build_step(case, args, rt) for case in CASES}, rt, args.steps, warmup=1)
        print(json.dumps(result))
        return 0

    cases = list(CASES)
    memory = [run_child(__file__, argv, "memory", case) for case in cases]
    rounds = [run_child(__file__, argv, "time") for _ in range(args.rounds)]
    results = combine(cases, memory, rounds)
    ok = [r for r in results if "error" not in r]
    ref = ok[0] if ok else None
    print(f"G-128 forward+backward, batch {args.batch}, ch {args.ch}, {args.device}, {args.threads} threads, "
          f"torch {torch.__version__}")
    print(f"{'attention':<24}{'median s':>10}{'x dense@64':>12}{'rise MiB':>10}{'x dense@64':>12}")
    for r in results:
        if "error" in r:
            print(f"{r['case']:<24}  error: {r['error']}")
            continue
        time_ratio, _ = paired_ratio(r, ref, "median_s")
        print(f"{r['case']:<24}{r['median_s']:>10.2f}{time_ratio:>12.2f}"
              f"{r['rise_bytes'] / 2**20:>10.0f}{r['rise_bytes'] / ref['rise_bytes']:>12.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in vars(args).items() if not k.startswith("child_")}
    out.write_text(json.dumps({**meta, "torch": torch.__version__, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
