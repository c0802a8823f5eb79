"""torchrun worker for tests/test_ddp.py: a few BigGAN D/G steps on a fixed global batch split across the ranks.

Every step draws one global batch of reals and latents from a fixed seed, and rank r trains on rows
[r·B, (r+1)·B). So one process with batch 2B sees exactly what two processes with batch B see together, and with
cross-replica BN the two runs are the same computation. Variants: ``sync_bn`` (cross-replica BN), ``plain`` (per-rank
BN), ``accumulate`` (sync_bn with 2 micro-batches, DDP's ``no_sync`` on the first through ``runtime.sync``) and
``accumulate_every`` (the same with an all-reduce after each micro-batch). Per variant rank 0 writes the per-step losses
and gradient norms (reduced over ranks) to ``OUT/<variant>/losses.json`` and ``grad_norms.json``, and every rank writes
its final G and D state (and DDP's ``broadcast_buffers`` flags) to ``OUT/<variant>/rank<r>.pt``.

Shape legend: B batch (per process), C channels, h×w spatial size.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from biggan.models import AttentionConfig, ModelConfig, NetworkConfig, build_discriminator, build_generator
from biggan.runtime import Runtime, RuntimeConfig
from biggan.training.losses import hinge_d, hinge_g
from biggan.training.optimizer import LeanAdam
from biggan.training.steps import StepContext, d_step, g_step

VARIANTS = ("sync_bn", "plain", "accumulate", "accumulate_every")

RES, DIM_Z = 32, 64


def model_config() -> ModelConfig:
    """Demo-sized BigGAN-32: SMYRF in G (one cluster per round, so it is exact and batch-split independent)."""
    smyrf = AttentionConfig(res=32, kind="smyrf", n_hashes=2, q_cluster_size=1024, k_cluster_size=256)
    return ModelConfig(
        resolution=RES,
        dim_z=DIM_Z,
        init="normal",  # N(0, 0.02): small logits in this narrow D, so no hinge term saturates
        G=NetworkConfig(ch=8, attention=[smyrf]),
        D=NetworkConfig(ch=8, attention=[AttentionConfig(res=16, kind="dense")]),
    )


def train(rt: Runtime, out: Path, batch: int, steps: int, accumulate: int = 1, no_sync: bool = True) -> None:
    """Train ``steps`` D+G steps with ``batch`` images per process in ``accumulate`` micro-batches (``no_sync``: the
    runtime's sync hook, else an all-reduce per micro-batch); write losses (rank 0) and states (every rank)."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)  # same initial weights everywhere (DDP would broadcast rank 0's anyway)
    G = rt.wrap_model(build_generator(model_config()))
    D = rt.wrap_model(build_discriminator(model_config()))
    opt_G = LeanAdam(G.parameters(), lr=2e-4, betas=(0.0, 0.999))
    opt_D = LeanAdam(D.parameters(), lr=4e-4, betas=(0.0, 0.999))
    ctx = StepContext(rt.optimizer_step, rt.autocast, accumulate, **({"sync": rt.sync} if no_sync else {}))

    data = torch.Generator().manual_seed(1234)  # the global batch stream, identical on every rank
    mine = slice(rt.rank * batch, (rt.rank + 1) * batch)
    global_batch = batch * rt.world_size
    losses, norms = [], []
    for _ in range(steps):
        x_real = torch.rand(global_batch, 3, RES, RES, generator=data) * 2 - 1  # (B_global, 3, h, w)
        z_d = torch.randn(global_batch, DIM_Z, generator=data)
        z_g = torch.randn(global_batch, DIM_Z, generator=data)
        stats = d_step(G, D, opt_D, x_real=rt.shard_batch(x_real[mine]), z=rt.shard_batch(z_d[mine]), loss=hinge_d,
                       ctx=ctx)
        stats.update(g_step(G, rt.unwrap(D), opt_G, z=rt.shard_batch(z_g[mine]), loss=hinge_g, ctx=ctx))
        losses.append(rt.reduce_mean({k: stats[k] for k in ("D_real", "D_fake", "G")}))
        norms.append(rt.reduce_mean({k: stats[k] for k in ("D_grad_norm", "G_grad_norm")}))  # all-reduced gradients

    broadcast = {name: getattr(net, "forward_sync_buffers", getattr(net, "broadcast_buffers", None))  # DDP's flag
                 for name, net in (("G", G), ("D", D))}
    torch.save({"G": rt.unwrap(G).state_dict(), "D": rt.unwrap(D).state_dict(), "rank": rt.rank,
                "num_data_shards": rt.num_data_shards, "broadcast_buffers": broadcast}, out / f"rank{rt.rank}.pt")
    if rt.is_main:
        (out / "losses.json").write_text(json.dumps(losses))
        (out / "grad_norms.json").write_text(json.dumps(norms))


def run(out: Path, batch: int, steps: int, variants: list[str]) -> None:
    """One training per variant (:data:`VARIANTS`) into ``out/<variant>``, sharing one process group."""
    rt = Runtime.setup(RuntimeConfig(kind="cpu"))
    try:
        for variant in variants:
            # Test-only shortcut: switching the option on a live runtime saves a second torchrun start-up.
            rt.cfg = dataclasses.replace(rt.cfg, sync_bn=variant != "plain")
            accumulate = 2 if variant.startswith("accumulate") else 1
            train(rt, out / variant, batch, steps, accumulate, no_sync=variant != "accumulate_every")
    finally:
        rt.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, required=True, help="images per process")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["sync_bn"])
    args = parser.parse_args()
    run(args.out, args.batch, args.steps, args.variants)
