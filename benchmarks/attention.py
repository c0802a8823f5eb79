"""SMYRF against dense attention at the BigGAN shapes: time, peak memory, approximation error, scaling in N.

    python benchmarks/attention.py [--quick] [--device cpu|cuda] [--dtype fp32|bf16] [--threads 2] [--out results.json]

What it measures (smyrf.md sections 4, 5, 9; defect D8):
- forward+backward median wall time (and process CPU time, which a busy shared machine distorts less) and peak
  memory of dense naive (bmm + softmax, as BigGAN does), dense SDPA
  (``scaled_dot_product_attention``) and SMYRF (fused path; ``smyrf-math`` = the matmul+softmax block kernel, which is
  how the CPU kernel choice was made; ``smyrf-mean``/``smyrf-taylor`` = with cluster summaries, ``smyrf.summary``).
  On CPU every (shape, implementation) runs in its own subprocess and the peak is the rise of peak RSS above the RSS
  after inputs are built; on CUDA it is the rise of max_memory_allocated, and
  timed regions are synchronised after warm-up.
- relative Frobenius error ||smyrf - dense|| / ||dense|| and the mean dense softmax mass on the keys each query met,
  on inputs with cluster structure: q and k tokens drawn around 32 shared centres (isotropic Gaussians say nothing
  about trained activations). Mean and spread over seeds. The exact output is computed in query chunks.
- time of SMYRF for N = 1k ... 64k at fixed cluster sizes, and the fitted exponent of time ~ N^p.

Shape legend: B batch; Nq, Nk queries/keys; d, dv; H hash rounds; cq, ck cluster sizes.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere in the checkout

from smyrf import dense_attention, smyrf_attention  # noqa: E402

# name: (Nq, Nk, d, dv, H, cq, ck) -- smyrf.md section 5
SHAPES = {
    "G128@128": (16384, 4096, 12, 48, 4, 2048, 512),
    "G128@64": (4096, 1024, 24, 96, 8, 256, 64),
    "G256@256": (65536, 16384, 12, 48, 4, 8192, 2048),
}
IMPLS = ("dense-naive", "dense-sdpa", "smyrf", "smyrf-kdtree", "smyrf-math", "smyrf-mean", "smyrf-taylor")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def clustered_qkv(nq, nk, d, dv, batch, seed, dtype, device, n_centres=32, spread=0.3):
    """q and k tokens around shared centres (unit-variance centres, noise ``spread``); v Gaussian."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_centres, d, generator=gen)  # (32, d)
    q = centres[torch.randint(n_centres, (batch, nq), generator=gen)]  # (B, Nq, d)
    k = centres[torch.randint(n_centres, (batch, nk), generator=gen)]  # (B, Nk, d)
    q = q + spread * torch.randn(batch, nq, d, generator=gen)
    k = k + spread * torch.randn(batch, nk, d, generator=gen)
    v = torch.randn(batch, nk, dv, generator=gen)
    return [x.to(device=device, dtype=dtype) for x in (q, k, v)]  # (B, Nq, d), (B, Nk, d), (B, Nk, dv)


def run_impl(impl, q, k, v, shape):
    _, _, _, _, n_hashes, cq, ck = shape
    if impl == "dense-naive":
        return torch.bmm(torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1), v)  # (B, Nq, dv)
    if impl == "dense-sdpa":
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=1.0)
    kernel = "math" if impl == "smyrf-math" else "auto"
    hashing = "kdtree" if impl == "smyrf-kdtree" else "projection"
    summary = impl.split("-")[1] if impl in ("smyrf-mean", "smyrf-taylor") else "none"  # smyrf.summary
    return smyrf_attention(q, k, v, n_hashes=n_hashes, q_cluster_size=cq, k_cluster_size=ck, scale=1.0,
                           generator=torch.Generator().manual_seed(0), kernel=kernel, hashing=hashing,
                           summary=summary)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(impl, shape, batch, dtype, device, reps, warmup=1):
    """Median forward+backward seconds and peak extra bytes of one implementation (run in a fresh process on CPU)."""
    nq, nk, d, dv = shape[:4]
    q, k, v = [x.requires_grad_() for x in clustered_qkv(nq, nk, d, dv, batch, 0, dtype, device)]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    times, cpu_times = [], []
    for i in range(warmup + reps):
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        run_impl(impl, q, k, v, shape).sum().backward()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        q.grad = k.grad = v.grad = None
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"time_s": statistics.median(times), "times_s": times, "cpu_s": statistics.median(cpu_times),
            "peak_mb": peak / 2**20}


def measure_isolated(args, impl, shape, reps):
    """On CPU, one subprocess per measurement so that peak RSS belongs to that implementation alone."""
    if args.device == "cuda":
        return measure(impl, shape, 1, DTYPES[args.dtype], "cuda", reps)
    cmd = [sys.executable, __file__, "--worker", json.dumps([impl, list(shape), reps]), "--dtype", args.dtype,
           "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def dense_chunked(q, k, v, chunk=2048):
    """Exact dense output (scale 1) in query chunks, so that even G256@256 fits: (B, Nq, dv)."""
    return torch.cat([dense_attention(q[:, i:i + chunk], k, v, scale=1.0) for i in range(0, q.shape[1], chunk)], 1)


def met_mass(q, k, perm_q, perm_k, cq, ck, chunk=2048):
    """Mean over queries of the dense softmax mass on the union of keys the query met in its H rounds."""
    n_hashes, b, nq = perm_q.shape
    nk = perm_k.shape[-1]
    cl_q = torch.empty_like(perm_q).scatter_(2, perm_q, torch.arange(nq).expand_as(perm_q) // cq)  # (H, B, Nq)
    cl_k = torch.empty_like(perm_k).scatter_(2, perm_k, torch.arange(nk).expand_as(perm_k) // ck)  # (H, B, Nk)
    total = 0.0
    for i in range(0, nq, chunk):
        probs = torch.softmax(q[:, i:i + chunk] @ k.transpose(1, 2), dim=-1)  # (B, chunk, Nk)
        met = (cl_q[:, :, i:i + chunk].unsqueeze(-1) == cl_k.unsqueeze(-2)).any(0)  # (B, chunk, Nk)
        total += (probs * met).sum().item()
    return total / (b * nq)


def approximation_error(shape, seeds, hashings=("projection", "kdtree")):
    """Relative error and met mass of SMYRF on clustered fp32 inputs, one fresh projection seed per data seed."""
    nq, nk, d, dv, n_hashes, cq, ck = shape
    errors = {h: [] for h in hashings}
    masses = {h: [] for h in hashings}
    for seed in seeds:
        q, k, v = clustered_qkv(nq, nk, d, dv, 1, seed, torch.float32, "cpu")
        exact = dense_chunked(q, k, v)
        for hashing in hashings:
            out, (perm_q, perm_k) = smyrf_attention(
                q, k, v, n_hashes=n_hashes, q_cluster_size=cq, k_cluster_size=ck, scale=1.0, hashing=hashing,
                generator=torch.Generator().manual_seed(seed), return_clusters=True,
            )
            errors[hashing].append(((out - exact).norm() / exact.norm()).item())
            masses[hashing].append(met_mass(q, k, perm_q, perm_k, cq, ck))
    return {h: {"rel_error_mean": statistics.mean(errors[h]), "rel_error_std": statistics.stdev(errors[h]),
                "met_mass_mean": statistics.mean(masses[h]), "rel_errors": errors[h], "met_masses": masses[h],
                "seeds": list(seeds)} for h in hashings}


def scaling_sweep(args, sizes, reps):
    """SMYRF forward+backward time for Nq = N, Nk = N/4 at fixed cq=512, ck=128 (H=4, d=12, dv=48)."""
    rows = []
    for n in sizes:
        rows.append({"N": n, **measure_isolated(args, "smyrf", (n, n // 4, 12, 48, 4, 512, 128), reps)})
    ok = [r for r in rows if "time_s" in r]
    xs, ys = [math.log(r["N"]) for r in ok], [math.log(r["time_s"]) for r in ok]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return {"rows": rows, "exponent": slope}


def dense_bytes(shape, dtype) -> float:
    """Rough peak of dense fwd+bwd: scores, probabilities and their gradient."""
    nq, nk = shape[:2]
    return 3 * nq * nk * torch.finfo(dtype).bits / 8


def timing_table(args) -> dict:
    """Time and memory of every implementation at the BigGAN shapes; prints the table, returns the rows."""
    dtype = DTYPES[args.dtype]
    reps = 2 if args.quick else 5
    print(f"forward+backward, batch 1, {args.threads} threads, {args.dtype}, median of {reps} after 1 warm-up:")
    print(f"{'shape':10} {'impl':12} {'time s':>8} {'cpu s':>8} {'peak MB':>9} {'time/sdpa':>9} {'mem/naive':>9}")
    table = {}
    for name, shape in SHAPES.items():
        row = {}
        for impl in IMPLS:
            need = dense_bytes(shape, dtype)
            if impl.startswith("dense") and need > args.dense_limit_gb * 2**30:
                row[impl] = {"skipped": f"dense cannot run here (needs ~{need / 2**30:.1f} GB > --dense-limit-gb)"}
            elif args.quick and (impl.startswith("smyrf-") and name != "G128@128"
                                 or impl.startswith("dense") and name == "G256@256"):
                row[impl] = {"skipped": "skipped in --quick"}
            else:
                row[impl] = measure_isolated(args, impl, shape, 1 if name == "G256@256" else reps)
        for impl in IMPLS:  # after the whole row, so that every ratio has its dense reference
            _print_row(name, impl, row)
        table[name] = row
    return table


def _print_row(name: str, impl: str, row: dict) -> None:
    r = row[impl]
    if "time_s" not in r:
        print(f"{name:10} {impl:12} {r.get('skipped') or r.get('error')}")
        return
    sdpa, naive = row.get("dense-sdpa", {}), row.get("dense-naive", {})
    t_ratio = r["time_s"] / sdpa["time_s"] if "time_s" in sdpa else float("nan")
    m_ratio = r["peak_mb"] / naive["peak_mb"] if "peak_mb" in naive else float("nan")
    print(f"{name:10} {impl:12} {r['time_s']:8.3f} {r['cpu_s']:8.3f} {r['peak_mb']:9.1f} {t_ratio:9.2f} {m_ratio:9.2f}")


def error_table(args) -> dict:
    """Approximation error of both hashing schemes at equal score memory (same H, cq, ck)."""
    print("relative error against exact dense, tokens around 32 centres, mean +- std over 5 seeds:")
    table = {}
    for name in ("G128@128", "G128@64") + (() if args.quick else ("G256@256",)):
        table[name] = approximation_error(SHAPES[name], range(5))
        for hashing, err in table[name].items():
            print(f"{name:10} {hashing:10} rel. error {err['rel_error_mean']:.3f} +- {err['rel_error_std']:.3f}; "
                  f"dense softmax mass on met keys {err['met_mass_mean']:.3f}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and sizes (< 5 min on 2 CPU cores)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads in every measurement")
    parser.add_argument("--dense-limit-gb", type=float, default=8.0, help="skip dense runs estimated above this")
    parser.add_argument("--out", default="benchmarks/results/attention.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        impl, shape, reps = json.loads(args.worker)
        print(json.dumps(measure(impl, tuple(shape), 1, DTYPES[args.dtype], "cpu", reps)))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch.cuda.is_available() is False; run with --device cpu")

    results = {"device": args.device, "dtype": args.dtype, "threads": args.threads, "torch": torch.__version__,
               "quick": args.quick, "timing": timing_table(args), "error": error_table(args)}
    sizes = [1024, 8192, 65536] if args.quick else [1024, 2048, 4096, 8192, 16384, 32768, 65536]
    results["sweep"] = sweep = scaling_sweep(args, sizes, 1 if args.quick else 3)
    points = ", ".join(f"N={r['N']}: {r['time_s']:.3f}s" for r in sweep["rows"] if "time_s" in r)
    print(f"sweep (cq=512, ck=128, H=4): {points}; time ~ N^{sweep['exponent']:.2f}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
