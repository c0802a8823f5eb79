"""SMYRF equivalences against closed forms (smyrf.md section 8): dense limit, multiset-union softmax, gradients."""

from __future__ import annotations

import pytest
import torch

import smyrf
from smyrf import (
    asymmetric_transform,
    balanced_clusters,
    combine_rounds,
    dense_attention,
    draw_projections,
    hash_rounds,
    smyrf_attention,
    unsort,
)

# Every block kernel: the CUDA ones ("efficient", "cuda_flash") run here through exact stand-ins of their aten ops.
KERNELS = ["math", "flash", "flex", "efficient", "cuda_flash"]
IMPLS = [("reference", "auto")] + [("fused", kernel) for kernel in KERNELS]


@pytest.fixture(autouse=True)
def _cuda_kernels_here(cuda_kernels_on_cpu):
    """Every test of this module may name the CUDA kernels."""


def _qkv(b=(2,), nq=32, nk=16, d=6, dv=5, dtype=torch.float64, seed=0, grad=True):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(*b, nq, d, generator=gen, dtype=dtype)
    k = torch.randn(*b, nk, d, generator=gen, dtype=dtype)
    v = torch.randn(*b, nk, dv, generator=gen, dtype=dtype)
    return [x.requires_grad_(grad) for x in (q, k, v)]


def _grads(out, inputs):
    weight = torch.linspace(-1.0, 2.0, out.shape[-1], dtype=out.dtype)  # a non-uniform upstream gradient
    return torch.autograd.grad((out * weight).sum(), inputs)


def _multiset_union(q, k, v, perm_q, perm_k, cq, ck, scale):
    """(sum_t m_t * exp(s q k^T)) v / rowsum(...), with m_t the 0/1 membership of each round's clusters."""
    n_hashes, b, nq = perm_q.shape
    nk = perm_k.shape[-1]
    cluster_q = torch.empty_like(perm_q).scatter_(2, perm_q, torch.arange(nq).expand_as(perm_q) // cq)  # (H, B, Nq)
    cluster_k = torch.empty_like(perm_k).scatter_(2, perm_k, torch.arange(nk).expand_as(perm_k) // ck)  # (H, B, Nk)
    counts = (cluster_q.unsqueeze(-1) == cluster_k.unsqueeze(-2)).to(q.dtype).sum(0)  # (B, Nq, Nk)
    logits = scale * q @ k.transpose(-1, -2)  # (B, Nq, Nk)
    weights = counts * torch.exp(logits - logits.amax(-1, keepdim=True))
    return (weights @ v) / weights.sum(-1, keepdim=True)


@pytest.mark.parametrize("impl,kernel", IMPLS)
@pytest.mark.parametrize("scale", [None, 1.0, 0.3])
def test_one_hash_one_cluster_is_dense(impl, kernel, scale):
    q, k, v = _qkv(nq=24, nk=10)
    out = smyrf_attention(q, k, v, n_hashes=1, q_cluster_size=24, k_cluster_size=10, scale=scale, impl=impl,
                          kernel=kernel)
    ref = dense_attention(q, k, v, scale=scale)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for g, g_ref in zip(_grads(out, (q, k, v)), _grads(ref, (q, k, v))):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_dense_matches_sdpa():
    q, k, v = _qkv(dtype=torch.float32, grad=False, dv=6)
    for scale in (None, 1.0):
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
        torch.testing.assert_close(dense_attention(q, k, v, scale=scale), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl,kernel", IMPLS)
@pytest.mark.parametrize("n_hashes,cq,ck", [(3, 8, 4), (4, 16, 8), (2, 4, 2)])
def test_multi_round_is_multiset_union_softmax(impl, kernel, n_hashes, cq, ck):
    q, k, v = _qkv(b=(2, 3))
    out, (perm_q, perm_k) = smyrf_attention(
        q, k, v, n_hashes=n_hashes, q_cluster_size=cq, k_cluster_size=ck, scale=0.8,
        generator=torch.Generator().manual_seed(5), return_clusters=True, impl=impl, kernel=kernel,
    )
    flat = [x.reshape(-1, *x.shape[-2:]) for x in (q, k, v)]
    ref = _multiset_union(*flat, perm_q.reshape(n_hashes, -1, 32), perm_k.reshape(n_hashes, -1, 16), cq, ck, 0.8)
    ref = ref.reshape(out.shape)
    torch.testing.assert_close(out, ref, rtol=1e-11, atol=1e-12)
    for g, g_ref in zip(_grads(out, (q, k, v)), _grads(ref, (q, k, v))):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_duplicate_rounds_count_twice_and_identical_rounds_equal_one():
    q, k, v = _qkv(grad=False)
    one = draw_projections(6, 1, torch.Generator().manual_seed(3))  # (d+2, 1)
    repeated = one.repeat(1, 4)  # (d+2, 4): the same direction 4 times
    kw = dict(q_cluster_size=8, k_cluster_size=4, scale=1.0)
    single = smyrf_attention(q, k, v, n_hashes=1, projections=one, **kw)
    for impl in ("fused", "reference"):
        torch.testing.assert_close(smyrf_attention(q, k, v, n_hashes=4, projections=repeated, impl=impl, **kw), single)


@pytest.mark.parametrize("impl,kernel", IMPLS)
def test_gradcheck_float64(impl, kernel):
    q, k, v = _qkv(b=(1,), nq=8, nk=4, d=3, dv=2)
    proj = draw_projections(3, 2, torch.Generator().manual_seed(0))

    def fn(q, k, v):
        return smyrf_attention(q, k, v, n_hashes=2, q_cluster_size=4, k_cluster_size=2, scale=0.9,
                               projections=proj, impl=impl, kernel=kernel)

    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_fused_matches_reference_float32_and_round_weights():
    q, k, v = _qkv(b=(3,), nq=64, nk=32, d=8, dv=12, dtype=torch.float32)
    proj = draw_projections(8, 4, torch.Generator().manual_seed(2))
    kw = dict(n_hashes=4, q_cluster_size=16, k_cluster_size=8, projections=proj, scale=1.0)
    ref = smyrf_attention(q, k, v, impl="reference", **kw)
    ref_grads = _grads(ref, (q, k, v))
    for kernel in ("math", "flash", "flex", "efficient"):  # the CUDA flash kernel has no fp32 variant
        out = smyrf_attention(q, k, v, impl="fused", kernel=kernel, **kw)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        for g, g_ref in zip(_grads(out, (q, k, v)), ref_grads):
            torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)
    # Round weights of the batched merge: >= 0, sum to 1 per query.
    lse = torch.randn(4, 3, 64, dtype=torch.float64) * 10
    weights = torch.softmax(lse, dim=0)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(0), torch.ones(3, 64, dtype=torch.float64))
    out_rounds = torch.randn(4, 3, 64, 5, dtype=torch.float64)
    torch.testing.assert_close(combine_rounds(out_rounds, lse), (weights.unsqueeze(-1) * out_rounds).sum(0))


def test_permutations_and_balanced_clusters():
    q, k, _ = _qkv(b=(3,), nq=48, nk=24, grad=False)
    q_lift, k_lift = asymmetric_transform(q, k)
    hq, hk = hash_rounds(q_lift, k_lift, draw_projections(6, 5, torch.Generator().manual_seed(1)))
    assert hq.shape == (5, 3, 48) and hk.shape == (5, 3, 24)
    perm_q, perm_k = balanced_clusters(hq, hk, 12, 6)
    for perm, n in ((perm_q, 48), (perm_k, 24)):
        assert torch.equal(perm.sort(-1).values, torch.arange(n).expand_as(perm))  # each round a permutation
    assert (hq.gather(-1, perm_q).diff(dim=-1) >= 0).all()  # sorted by hash
    # unsort(sort(x)) == x, with the (H, B, nc, cq, dv) cluster layout.
    x = torch.randn(3, 48, 2, dtype=torch.float64)
    s_x = x.unsqueeze(0).expand(5, -1, -1, -1).gather(2, perm_q.unsqueeze(-1).expand(-1, -1, -1, 2))
    s_lse = hq.gather(-1, perm_q)
    back, back_lse = unsort(s_x.reshape(5, 3, 4, 12, 2), s_lse.reshape(5, 3, 4, 12), perm_q)
    torch.testing.assert_close(back, x.expand(5, -1, -1, -1))
    torch.testing.assert_close(back_lse, hq)
    # Quantile pairing: cluster c holds the c-th block of cq sorted queries and of ck sorted keys.
    s_hq = hq.gather(-1, perm_q).view(5, 3, 4, 12)  # (H, B, nc, cq)
    s_hk = hk.gather(-1, perm_k).view(5, 3, 4, 6)  # (H, B, nc, ck)
    assert (s_hq[..., :-1, -1] <= s_hq[..., 1:, 0]).all() and (s_hk[..., :-1, -1] <= s_hk[..., 1:, 0]).all()


def test_lift_properties_and_zero_inputs():
    q, k, _ = _qkv(b=(2,), nq=10, nk=7, grad=False)
    q = q * torch.linspace(0.1, 3.0, 10, dtype=q.dtype).unsqueeze(-1)  # very different query norms
    q_lift, k_lift = asymmetric_transform(q, k)
    m = torch.sqrt(q.norm(dim=-1).amax(-1) ** 2 + k.norm(dim=-1).amax(-1) ** 2)  # (B,)
    torch.testing.assert_close(q_lift.norm(dim=-1), m.unsqueeze(-1).expand(2, 10))
    torch.testing.assert_close(k_lift.norm(dim=-1), m.unsqueeze(-1).expand(2, 7))
    torch.testing.assert_close(q_lift @ k_lift.transpose(-1, -2), q @ k.transpose(-1, -2))
    zeros = torch.zeros(2, 16, 6)
    for qq, kk in ((zeros, torch.randn(2, 8, 6)), (torch.randn(2, 16, 6), zeros[:, :8]), (zeros, zeros[:, :8])):
        ql, kl = asymmetric_transform(qq, kk)
        assert torch.isfinite(ql).all() and torch.isfinite(kl).all()
        out = smyrf_attention(qq, kk, torch.randn(2, 8, 3), n_hashes=2, q_cluster_size=4, k_cluster_size=2)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "nq,nk,cq,ck,match",
    [
        (100, 50, 32, 25, r"Nq=100 .*q_cluster_size=32 .*Nq % cq = 4"),
        (96, 50, 32, 16, r"Nk=50 .*k_cluster_size=16 .*Nk % ck = 2"),
        (96, 48, 32, 8, r"Nq/cq = 96/32 = 3 but Nk/ck = 48/8 = 6"),
    ],
)
def test_invalid_cluster_sizes_raise(nq, nk, cq, ck, match):
    q, k, v = torch.randn(8, nq, 4), torch.randn(8, nk, 4), torch.randn(8, nk, 4)
    with pytest.raises(ValueError, match=match):
        smyrf_attention(q, k, v, n_hashes=2, q_cluster_size=cq, k_cluster_size=ck)


def test_invalid_shapes_raise():
    kw = dict(n_hashes=1, q_cluster_size=4, k_cluster_size=4)
    with pytest.raises(ValueError, match=r"q d=4 and k d=5"):
        smyrf_attention(torch.randn(2, 8, 4), torch.randn(2, 8, 5), torch.randn(2, 8, 3), **kw)
    with pytest.raises(ValueError, match=r"k Nk=8 and v Nk=4"):
        smyrf_attention(torch.randn(2, 8, 4), torch.randn(2, 8, 4), torch.randn(2, 4, 3), **kw)
    with pytest.raises(ValueError, match=r"leading .* q \(2,\), k \(3,\)"):
        smyrf_attention(torch.randn(2, 8, 4), torch.randn(3, 8, 4), torch.randn(3, 8, 3), **kw)
    with pytest.raises(ValueError, match=r"projections must have shape \(d\+2, n_hashes\) = \(6, 1\)"):
        smyrf_attention(torch.randn(2, 8, 4), torch.randn(2, 8, 4), torch.randn(2, 8, 3),
                        projections=torch.randn(4, 1), **kw)


def test_determinism_and_global_rng_untouched():
    q, k, v = _qkv(b=(2,), nq=32, nk=16, dtype=torch.float32, grad=False)
    kw = dict(n_hashes=3, q_cluster_size=8, k_cluster_size=4, return_clusters=True)
    state = torch.get_rng_state()
    out1, (pq1, pk1) = smyrf_attention(q, k, v, generator=torch.Generator().manual_seed(7), **kw)
    out2, (pq2, pk2) = smyrf_attention(q, k, v, generator=torch.Generator().manual_seed(7), **kw)
    smyrf_attention(q, k, v, **kw)  # generator=None must not use the global RNG either
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(out1, out2) and torch.equal(pq1, pq2) and torch.equal(pk1, pk2)
    assert pq1.shape == (3, 2, 32) and pk1.shape == (3, 2, 16)
    _, (pq3, _) = smyrf_attention(q, k, v, generator=torch.Generator().manual_seed(8), **kw)
    assert not torch.equal(pq1, pq3)


def test_batch_independence_and_leading_dims():
    q, k, v = _qkv(b=(3,), nq=32, nk=16, grad=False)
    proj = draw_projections(6, 3, torch.Generator().manual_seed(4))
    kw = dict(n_hashes=3, q_cluster_size=8, k_cluster_size=4, projections=proj)
    full = smyrf_attention(q, k, v, **kw)
    for b in range(3):
        torch.testing.assert_close(smyrf_attention(q[b], k[b], v[b], **kw), full[b])  # no leading dims at all
    four_d = smyrf_attention(q.view(3, 1, 32, 6), k.view(3, 1, 16, 6), v.view(3, 1, 16, 5), **kw)
    torch.testing.assert_close(four_d.view(3, 32, 5), full)


def test_every_input_gets_a_gradient():
    q, k, v = _qkv(b=(2,), nq=32, nk=16, dtype=torch.float32)
    out = smyrf_attention(q, k, v, n_hashes=2, q_cluster_size=8, k_cluster_size=4, scale=1.0)
    for g in _grads(out, (q, k, v)):
        assert torch.isfinite(g).all() and (g.abs().sum(-1) > 0).all()


def test_module_has_no_state_and_seed_is_deterministic():
    attn = smyrf.SmyrfAttention(2, 8, 4, seed=11)
    assert list(attn.parameters()) == [] and list(attn.buffers()) == [] and attn.state_dict() == {}
    q, k, v = _qkv(b=(2,), nq=32, nk=16, dtype=torch.float32, grad=False)
    torch.testing.assert_close(attn(q, k, v, scale=1.0), attn(q, k, v, scale=1.0), rtol=0, atol=0)
    expected = smyrf_attention(q, k, v, n_hashes=2, q_cluster_size=8, k_cluster_size=4, scale=1.0,
                               generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(attn(q, k, v, scale=1.0), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="n_hashes must be >= 1"):
        smyrf.SmyrfAttention(0, 8, 4)


def test_bf16_autocast_keeps_dtype_and_accuracy():
    q, k, v = _qkv(b=(2,), nq=64, nk=16, d=8, dv=8, dtype=torch.float32)
    kw = dict(n_hashes=2, q_cluster_size=16, k_cluster_size=4, scale=1.0, generator=torch.Generator().manual_seed(0))
    ref = smyrf_attention(q, k, v, **kw)
    kw["generator"] = torch.Generator().manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = smyrf_attention(q, k, v, **kw)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.05)
    grads = _grads(out, (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)
    bf = [x.detach().bfloat16() for x in (q, k, v)]
    kw["generator"] = torch.Generator().manual_seed(0)
    assert smyrf_attention(*bf, **kw).dtype == torch.bfloat16


def test_public_api():
    assert set(smyrf.__all__) >= {
        "smyrf_attention", "SmyrfAttention", "dense_attention", "asymmetric_transform", "draw_projections",
        "hash_rounds", "balanced_clusters", "attend_in_clusters", "unsort", "combine_rounds",
    }


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("nq,nk,cq,ck", [(32, 16, 8, 4), (48, 24, 8, 4), (32, 16, 32, 16)])
def test_kdtree_hashing_is_multiset_union_softmax(impl, nq, nk, cq, ck):
    q, k, v = _qkv(b=(2,), nq=nq, nk=nk)
    out, (perm_q, perm_k) = smyrf_attention(
        q, k, v, n_hashes=2, q_cluster_size=cq, k_cluster_size=ck, scale=0.8, hashing="kdtree",
        generator=torch.Generator().manual_seed(1), return_clusters=True, impl=impl,
    )
    ref = _multiset_union(q, k, v, perm_q, perm_k, cq, ck, 0.8)
    torch.testing.assert_close(out, ref, rtol=1e-11, atol=1e-12)
    for g, g_ref in zip(_grads(out, (q, k, v)), _grads(ref, (q, k, v))):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)
    if nq == cq:  # one cluster per round: exactly dense
        torch.testing.assert_close(out, dense_attention(q, k, v, scale=0.8), rtol=1e-12, atol=1e-12)


def test_kdtree_clusters_are_balanced_tree_leaves():
    assert [smyrf.kdtree_levels(n) for n in (1, 2, 8, 6, 7, 16)] == [0, 1, 3, 2, 1, 4]
    q, k, _ = _qkv(b=(3,), nq=64, nk=16, grad=False)
    q_lift, k_lift = asymmetric_transform(q, k)
    proj = draw_projections(6, 2, torch.Generator().manual_seed(0), levels=2)  # (d+2, H, L), nc = 4 = 2 x 2
    hq, hk = hash_rounds(q_lift, k_lift, proj)
    assert hq.shape == (2, 3, 64, 2) and hk.shape == (2, 3, 16, 2)
    perm_q, perm_k = balanced_clusters(hq, hk, 16, 4)
    for perm, h, n in ((perm_q, hq, 64), (perm_k, hk, 16)):
        assert torch.equal(perm.sort(-1).values, torch.arange(n).expand_as(perm))
        s_h = h.gather(2, perm.unsqueeze(-1).expand(-1, -1, -1, 2)).view(2, 3, 2, 2, n // 4, 2)  # (H, B, f0, f1, c, L)
        # Level 0 splits at the median of h0; level 1 splits each half at the median of h1.
        assert (s_h[:, :, 0, ..., 0].amax((-1, -2)) <= s_h[:, :, 1, ..., 0].amin((-1, -2))).all()
        assert (s_h[:, :, :, 0, :, 1].amax(-1) <= s_h[:, :, :, 1, :, 1].amin(-1)).all()
    with pytest.raises(ValueError, match=r"needs 2 levels \[2, 2\], got hashes with 3"):
        balanced_clusters(hq.repeat(1, 1, 1, 2)[..., :3], hk.repeat(1, 1, 1, 2)[..., :3], 16, 4)
    with pytest.raises(ValueError, match=r"\(d\+2, n_hashes, kdtree_levels\(nc\)\) = \(8, 2, 2\)"):
        smyrf_attention(q, k, torch.randn(3, 16, 2, dtype=q.dtype), n_hashes=2, q_cluster_size=16, k_cluster_size=4,
                        hashing="kdtree", projections=draw_projections(6, 2))


@pytest.mark.parametrize("chunks", [[(0, 1), (1, 2), (2, 3)], [(0, 2), (2, 3)]])
def test_round_chunks_do_not_change_results(monkeypatch, chunks):
    import smyrf.fused
    import smyrf.kernels

    q, k, v = _qkv(b=(2,), nq=32, nk=16)
    kw = dict(n_hashes=3, q_cluster_size=8, k_cluster_size=4, scale=0.7, generator=None)
    proj = draw_projections(6, 3, torch.Generator().manual_seed(9))
    whole = smyrf_attention(q, k, v, projections=proj, **kw)
    whole_grads = _grads(whole, (q, k, v))
    fused, cpu, cuda = smyrf.fused, torch.device("cpu"), torch.device("cuda")
    math_k, efficient = smyrf.kernels.get_kernel("math", cpu), smyrf.kernels.KERNELS["efficient"]["cpu"]
    tiny = fused._per_round_bytes(math_k, 2, 32, 16, 4, 6, 5, torch.float64)
    assert fused._round_chunks(3, tiny, fused.chunk_budget(math_k, cpu)) == [(0, 3)]  # tiny shapes: one chunk
    # G128@128 with 8 images in fp32: a round alone exceeds the CPU budget, so rounds go one at a time.
    paper = fused._per_round_bytes(math_k, 8, 16384, 4096, 512, 12, 48, torch.float32)
    assert fused._round_chunks(4, paper, fused.chunk_budget(math_k, cpu)) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    # The GPU's budget is its own: G128@128 at batch 32 in bf16 with the fused kernel, two rounds per chunk.
    paper_gpu = fused._per_round_bytes(efficient, 32, 16384, 4096, 512, 16, 56, torch.bfloat16)
    assert fused._round_chunks(4, paper_gpu, fused.chunk_budget(efficient, cuda)) == [(0, 2), (2, 4)]
    monkeypatch.setattr(smyrf.fused, "_round_chunks", lambda *args: chunks)
    chunked = smyrf_attention(q, k, v, projections=proj, **kw)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
    for g, g_ref in zip(_grads(chunked, (q, k, v)), whole_grads):
        torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)


def _rms_row_errors(got: list[torch.Tensor], want: list[torch.Tensor]) -> list[float]:
    """Worst row error over the RMS row norm (a near-zero row does not make the measure blow up)."""
    errors = []
    for a, b in zip(got, want):
        a, b = a.detach().float().flatten(0, -2), b.detach().float().flatten(0, -2)
        errors.append(float((a - b).norm(dim=-1).max() / b.norm(dim=-1).square().mean().sqrt()))
    return errors


def test_delta_columns_keep_the_fp32_merge_in_multi_round_gradients(monkeypatch, smyrf_cuda_check):
    """4 rounds merged in fp32 are no bf16 number: without the Delta columns a kernel whose backward reads the output
    in bf16 forms Delta from the rounded merge. Measured at logits ~30 (worst row over RMS row): dq 3.3 % -> 2.0 %,
    dk 1.8 % -> 1.2 %; the rest is the kernel's own bf16 rounding, as for dense attention."""
    import smyrf.fused

    q, k, v = smyrf_cuda_check.logit_scaled(30, "cpu")
    dout = torch.randn(2, 256, 48, generator=torch.Generator().manual_seed(1)).bfloat16()  # (B, Nq, dv)
    kw = dict(n_hashes=4, q_cluster_size=64, k_cluster_size=16, scale=1.0)
    _, (perm_q, perm_k) = smyrf_attention(q.float(), k.float(), v.float(), return_clusters=True,
                                          generator=torch.Generator().manual_seed(3), **kw)
    exact = [x.float().requires_grad_() for x in (q, k, v)]
    want = _multiset_union(*exact, perm_q, perm_k, 64, 16, 1.0)
    want = [want, *torch.autograd.grad(want, exact, dout.float())]

    def errors() -> list[float]:
        low = [x.clone().requires_grad_() for x in (q, k, v)]
        out = smyrf_attention(*low, generator=torch.Generator().manual_seed(3), kernel="efficient", **kw)
        return _rms_row_errors([out, *torch.autograd.grad(out, low, dout)], want)

    with_columns = errors()
    pad = smyrf.fused._pad_last
    monkeypatch.setattr(smyrf.fused, "_delta_operands",
                        lambda dout, out, ev, dtype, lowp: (pad(dout, ev), pad(out.to(dtype), ev)))
    without = errors()
    assert with_columns[0] == without[0] and with_columns[3] == without[3]  # out and dv do not depend on Delta
    assert with_columns[1] < 0.7 * without[1] and with_columns[2] < 0.8 * without[2], (with_columns, without)


_MATMUL_OPS = {"mm", "bmm", "addmm", "baddbmm", "addbmm", "matmul", "mv", "dot", "einsum", "linear", "_mm"}


@pytest.mark.parametrize("levels", [None, 2])
def test_hashing_off_the_cpu_runs_no_matmul_and_matches_the_cpu_values(levels):
    """TF32 on CUDA (``runtime.tf32``, on by default) and XLA's default bf16 passes round matmul operands; SMYRF's
    hash must stay exact fp32 (near-ties decide clusters). Off the CPU ``hash_rounds`` projects with d+2 multiply-adds
    (``_project(matmul=False)``): no matmul-family op is dispatched. Its values equal the CPU einsum's (bit for bit on
    this machine; the CPU itself keeps the einsum, 5-6x faster there, whose values are those of earlier releases)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from smyrf.hashing import _project

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(func._overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    q, k = torch.randn(3, 64, 6) * 4, torch.randn(3, 16, 6) * 4
    q_lift, k_lift = smyrf.asymmetric_transform(q, k)
    proj = draw_projections(6, 4, torch.Generator().manual_seed(5), levels=levels)  # (d+2, H[, L])
    with Ops() as ops:
        hq_fma, hk_fma = _project(q_lift, proj, matmul=False), _project(k_lift, proj, matmul=False)
    assert ops.names and not ops.names & _MATMUL_OPS, sorted(ops.names & _MATMUL_OPS)
    with Ops() as ops:
        hq, hk = smyrf.hash_rounds(q_lift, k_lift, proj)  # CPU: the einsum
    assert ops.names & _MATMUL_OPS
    torch.testing.assert_close(hq_fma, hq, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(hk_fma, hk, rtol=1e-6, atol=1e-5)
