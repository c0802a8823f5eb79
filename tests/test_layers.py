"""Layers of the BigGAN models: spectral norm, conditional BN, the SAGAN attention block (dense vs SMYRF)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from biggan.errors import ConfigError
from biggan.models import AttentionConfig, SelfAttention2d
from biggan.models.conditioning import ConditionalBatchNorm2d
from biggan.models.spectral_norm import SNConv2d, SNEmbedding, SNLinear


def _attention(channels: int, res: int, **spec) -> SelfAttention2d:
    return SelfAttention2d(
        channels, AttentionConfig(res=res, **spec), eval_seed=1, train_seed=2, sn_iters=1, sn_eps=1e-6, where="test"
    )


@pytest.mark.parametrize("make", [lambda: SNLinear(20, 30), lambda: SNConv2d(6, 10, 3), lambda: SNEmbedding(7, 12)])
def test_spectral_norm_drives_top_singular_value_to_one(make) -> None:
    torch.manual_seed(0)
    layer = make()
    with torch.no_grad():
        layer.weight.mul_(5.0)
    true_sigma = torch.linalg.matrix_norm(layer.weight.reshape(layer.weight.shape[0], -1), ord=2)
    layer.train()
    for _ in range(200):  # one power iteration per training forward, as in BigGAN
        layer.normalized_weight()
    normalized = layer.normalized_weight().reshape(layer.weight.shape[0], -1)
    assert torch.linalg.matrix_norm(normalized, ord=2).item() == pytest.approx(1.0, abs=2e-3)
    assert layer.sv.item() == pytest.approx(true_sigma.item(), rel=1e-3)


def test_spectral_norm_updates_u_only_in_training_and_stays_fp32_under_autocast() -> None:
    torch.manual_seed(0)
    layer = SNLinear(16, 16)
    layer.eval()
    u_before = layer.u.clone()
    layer(torch.randn(2, 16))
    assert torch.equal(layer.u, u_before)
    layer.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(torch.randn(2, 16))
    assert out.dtype == torch.bfloat16
    assert layer.u.dtype == torch.float32 and layer.sv.dtype == torch.float32
    assert not torch.equal(layer.u, u_before)
    w = layer.weight.detach()
    # One fp32 iteration from the same u gives the same sigma as the layer's (a bf16 iteration would differ ~1e-2).
    v = nn.functional.normalize(u_before @ w, dim=1, eps=1e-6)
    u = nn.functional.normalize(v @ w.t(), dim=1, eps=1e-6)
    assert layer.sv.item() == pytest.approx((v @ w.t() @ u.t()).item(), rel=1e-6)


def _saved_bytes_beyond(params_and_inputs: list[torch.Tensor], run) -> int:
    """Bytes autograd keeps for backward while ``run()`` builds its graph, not counting the given tensors."""
    known = {t.data_ptr() for t in params_and_inputs}
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in known:
            saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(saved)


# Each layer with a small input (output smaller than the weight: the output is scaled) and a large one (the weight is).
SN_CASES = [
    (lambda: SNConv2d(64, 48, 3, padding=1), lambda n: torch.randn(n, 64, 4 * n, 4 * n), 1, 8),
    (lambda: SNConv2d(32, 16, 3, stride=2, padding=0), lambda n: torch.randn(n, 32, 5 * n, 5 * n), 1, 8),
    (lambda: SNLinear(64, 96), lambda n: torch.randn(n, 64), 2, 200),
    (lambda: SNEmbedding(40, 64), lambda n: torch.randint(0, 40, (n,)), 3, 100),
]


@pytest.mark.parametrize("make, inputs, small, large", SN_CASES)
def test_spectral_norm_layer_equals_op_on_normalized_weight_for_both_scaling_orders(make, inputs, small, large) -> None:
    torch.manual_seed(0)
    layer = make().eval()  # eval: u stays put, so every call sees the same sigma
    for n in (small, large):
        x = inputs(n)
        if x.is_floating_point():
            x.requires_grad_(True)
        out = layer(x)
        weight = layer.normalized_weight()
        if isinstance(layer, SNConv2d):
            expected = layer._conv_forward(x, weight, layer.bias)
        elif isinstance(layer, SNLinear):
            expected = nn.functional.linear(x, weight, layer.bias)
        else:
            expected = nn.functional.embedding(x, weight)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
        cotangent = torch.randn_like(out)
        leaves = [p for p in (x, layer.weight, getattr(layer, "bias", None)) if p is not None and p.requires_grad]
        got = torch.autograd.grad(out, leaves, cotangent)
        want = torch.autograd.grad(expected, leaves, cotangent)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_spectral_norm_keeps_no_normalized_copy_of_a_kernel_larger_than_the_output() -> None:
    torch.manual_seed(0)
    layer = SNConv2d(256, 256, 3, padding=1).train()  # a G-128 bottom layer in miniature: 590k weights, 4k outputs
    x = torch.randn(1, 256, 4, 4, requires_grad=True)
    weight_bytes = layer.weight.numel() * 4
    trained = _saved_bytes_beyond([x, layer.weight, layer.bias], lambda: layer(x))
    assert trained < weight_bytes / 20
    layer.requires_grad_(False)  # frozen (D inside G's step): nothing beyond sigma's scalar
    frozen = _saved_bytes_beyond([x, layer.weight, layer.bias], lambda: layer(x))
    assert frozen < weight_bytes / 100
    large = torch.randn(4, 16, 32, 32, requires_grad=True)  # a high-resolution layer: the kernel is the smaller one
    small_kernel = SNConv2d(16, 16, 3, padding=1).train()
    kept = _saved_bytes_beyond([large, small_kernel.weight, small_kernel.bias], lambda: small_kernel(large))
    assert kept < large.numel() * 4  # the output (as big as the input) is not kept; a kernel copy is


def test_conditional_bn_is_batch_norm_scaled_by_one_plus_gain() -> None:
    torch.manual_seed(0)
    cbn = ConditionalBatchNorm2d(4, lambda width: nn.Linear(3, width, bias=False), eps=1e-5)
    x, c = torch.randn(5, 4, 6, 6), torch.randn(5, 3)
    expected = nn.functional.batch_norm(x, None, None, training=True, eps=1e-5)
    gain = cbn.gain(c)[:, :, None, None]
    bias = cbn.bias(c)[:, :, None, None]
    torch.testing.assert_close(cbn(x, c), expected * (1 + gain) + bias)


def test_attention_block_is_identity_at_init() -> None:
    torch.manual_seed(0)
    block = _attention(16, 8)
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(block(x), x)


def test_smyrf_with_one_cluster_equals_dense() -> None:
    torch.manual_seed(0)
    res = 16
    dense = _attention(16, res).eval()
    with torch.no_grad():
        dense.gamma.fill_(0.7)
    one_cluster = dict(kind="smyrf", n_hashes=1, q_cluster_size=res * res, k_cluster_size=res * res // 4)
    smyrf = _attention(16, res, **one_cluster).eval()
    smyrf.load_state_dict(dense.state_dict(), strict=True)
    x = torch.randn(2, 16, res, res)
    torch.testing.assert_close(smyrf(x), dense(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(dense(x), x)  # the attention path contributes


def test_smyrf_eval_is_repeatable_and_training_draws_fresh_projections() -> None:
    torch.manual_seed(0)
    block = _attention(16, 16, kind="smyrf", n_hashes=2, q_cluster_size=32, k_cluster_size=8)
    with torch.no_grad():
        block.gamma.fill_(1.0)
    x = torch.randn(2, 16, 16, 16)
    block.eval()
    torch.testing.assert_close(block(x), block(x), rtol=0, atol=0)
    block.train()
    first = block(x)
    for layer in (block.theta, block.phi, block.g, block.o):
        layer.eval()  # freeze SN so that only the projections can change the output
    state = block.generator.get_state()
    second, third = block(x), block(x)
    assert not torch.allclose(second, third)
    block.generator.set_state(state)
    torch.testing.assert_close(block(x), second, rtol=0, atol=0)
    assert first.shape == x.shape


def test_configure_switches_kind_in_place_and_checks_sizes() -> None:
    block = _attention(16, 16)
    weights = {k: v.clone() for k, v in block.state_dict().items()}
    block.configure(AttentionConfig(res=16, kind="smyrf", n_hashes=4, q_cluster_size=64, k_cluster_size=16))
    assert block.spec.kind == "smyrf"
    assert all(torch.equal(weights[k], v) for k, v in block.state_dict().items())
    with pytest.raises(ConfigError, match="q_cluster_size 100 does not divide the 256 queries"):
        block.configure(AttentionConfig(res=16, kind="smyrf", n_hashes=4, q_cluster_size=100, k_cluster_size=25))
    with pytest.raises(ConfigError, match="k_cluster_size 48 does not divide the 64"):
        block.configure(AttentionConfig(res=16, kind="smyrf", n_hashes=4, q_cluster_size=64, k_cluster_size=48))
    with pytest.raises(ConfigError, match="256/64 = 4 query clusters but 64/32 = 2 key clusters"):
        block.configure(AttentionConfig(res=16, kind="smyrf", n_hashes=4, q_cluster_size=64, k_cluster_size=32))
    with pytest.raises(ConfigError, match="n_hashes act only with kind: smyrf"):
        block.configure(AttentionConfig(res=16, kind="dense", n_hashes=4))
    with pytest.raises(ConfigError, match="set q_cluster_size, k_cluster_size"):
        block.configure(AttentionConfig(res=16, kind="smyrf", n_hashes=4))
    with pytest.raises(ConfigError, match="multiple of 8"):
        _attention(12, 16)


def test_upsample_nearest2x_equals_interpolate_in_values_and_gradients() -> None:
    import torch.nn.functional as F

    from biggan.models.blocks import upsample_nearest2x

    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 3, 10, 8, dtype=torch.float64)
    ours = upsample_nearest2x(x)
    (grad_ours,) = torch.autograd.grad((ours * weight).sum(), x)
    ref = F.interpolate(x, scale_factor=2, mode="nearest")
    (grad_ref,) = torch.autograd.grad((ref * weight).sum(), x)
    assert torch.equal(ours, ref)
    assert torch.allclose(grad_ours, grad_ref, rtol=0, atol=1e-12)


def test_kdtree_hashing_is_selectable_per_layer_and_dense_rejects_it() -> None:
    spec = AttentionConfig(res=8, kind="smyrf", n_hashes=2, q_cluster_size=16, k_cluster_size=4, hashing="kdtree")
    layer = SelfAttention2d(16, spec, eval_seed=1, train_seed=2, sn_iters=1, sn_eps=1e-6, where="test").eval()
    with torch.no_grad():
        layer.gamma.fill_(1.0)
        x = torch.randn(2, 16, 8, 8)
        kdtree = layer(x)
        layer.configure(AttentionConfig(res=8, kind="smyrf", n_hashes=2, q_cluster_size=16, k_cluster_size=4))
        projection = layer(x)
    assert "hashing=kdtree" not in repr(layer) and kdtree.shape == projection.shape
    assert not torch.equal(kdtree, projection)  # the two schemes form different clusters
    with pytest.raises(ConfigError, match="hashing"):
        AttentionConfig(res=8, kind="dense", hashing="kdtree").validate("test")
