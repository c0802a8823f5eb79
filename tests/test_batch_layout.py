"""The step's batch layouts (biggan.training.batch_layout) and the D and G steps that use them, on CPU."""

from __future__ import annotations

import contextlib

import pytest
import torch

from biggan.models import AttentionConfig, ModelConfig, NetworkConfig, build_discriminator, build_generator
from biggan.training.batch_layout import micro_batches, pair_by_block, unpair_by_block
from biggan.training.losses import hinge_d, hinge_g
from biggan.training.steps import StepContext, d_step, g_step


def test_one_block_is_chunk_and_cat() -> None:
    x = torch.arange(24.0).view(12, 2)
    for accumulate in (1, 2, 3):
        assert all(torch.equal(m, c) for m, c in zip(micro_batches(x, accumulate, 1), x.chunk(accumulate)))
    assert micro_batches(None, 3, 2) == [None, None, None]
    assert torch.equal(pair_by_block(x, -x, 1), torch.cat([x, -x]))
    first, second = unpair_by_block(pair_by_block(x, -x, 3), 3)
    assert torch.equal(first, x) and torch.equal(second, -x)


def test_every_micro_batch_and_pair_stays_in_its_blocks() -> None:
    """Block s (a device's rows under SPMD) of every micro-batch and of D's paired batch comes from block s only."""
    x = torch.arange(8)  # 2 blocks: rows 0-3 and 4-7
    assert [m.tolist() for m in micro_batches(x, 2, 2)] == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert pair_by_block(torch.arange(4), torch.arange(4) + 10, 2).tolist() == [0, 1, 10, 11, 2, 3, 12, 13]
    with pytest.raises(ValueError, match="does not split"):
        micro_batches(torch.zeros(6), 2, 2)


def _nets() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    smyrf = AttentionConfig(res=16, kind="smyrf", n_hashes=2, q_cluster_size=64, k_cluster_size=16)
    cfg = ModelConfig(resolution=32, dim_z=32, init="normal", G=NetworkConfig(ch=4, attention=[smyrf]),
                      D=NetworkConfig(ch=4, attention=[AttentionConfig(res=16, kind="dense")]))
    return build_generator(cfg), build_discriminator(cfg)


def _train(shards: int, x: torch.Tensor, z_d: torch.Tensor, z_g: torch.Tensor) -> tuple[dict, dict, dict]:
    G, D = _nets()
    # SGD, not Adam: Adam divides rounding-noise gradients (a bias followed by BatchNorm) by their own size.
    opt_G, opt_D = (torch.optim.SGD(n.parameters(), lr=0.1) for n in (G, D))
    ctx = StepContext(lambda opt: opt.step(), contextlib.nullcontext, accumulate=2, batch_shards=shards)
    out = d_step(G, D, opt_D, x_real=x, z=z_d, loss=hinge_d, ctx=ctx)
    out.update(g_step(G, D, opt_G, z=z_g, loss=hinge_g, ctx=ctx))
    return out, G.state_dict(), D.state_dict()


def test_steps_with_blocks_equal_the_steps_on_the_rows_regrouped() -> None:
    """batch_shards = 2 changes only which rows share a micro-batch (and their order inside D's one forward): the
    one-block steps (chunk and cat, the layout before) on the rows regrouped into those micro-batches give the same
    losses, the same D (one SN power iteration per micro-batch, as before) and the same G."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 3, 32, 32, generator=g) * 2 - 1  # (B, 3, h, w)
    z_d, z_g = torch.randn(8, 32, generator=g), torch.randn(8, 32, generator=g)  # (B, dim_z)
    order = torch.cat(micro_batches(torch.arange(8), 2, 2))  # micro-batch rows, contiguous
    blocked = _train(2, x, z_d, z_g)
    regrouped = _train(1, x[order], z_d[order], z_g[order])
    for key in blocked[0]:
        torch.testing.assert_close(blocked[0][key], regrouped[0][key], rtol=1e-5, atol=1e-6, msg=key)
    for got, want in zip(blocked[1:], regrouped[1:]):
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)
