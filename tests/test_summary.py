"""Cluster summaries (smyrf.summary) against an explicit loop oracle; exactness, gradients, memory, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from smyrf import cluster_summaries, dense_attention, draw_projections, merge_softmax, smyrf_attention

IMPLS = [("reference", "auto"), ("fused", "math"), ("fused", "flash")]


def _qkv(b=2, nq=16, nk=8, d=3, dv=4, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, nq, d, generator=gen, dtype=dtype) * 1.5
    k = torch.randn(b, nk, d, generator=gen, dtype=dtype) * 1.5
    v = torch.randn(b, nk, dv, generator=gen, dtype=dtype)
    return [x.requires_grad_() for x in (q, k, v)]


def _oracle(q, k, v, perm_q, perm_k, cq, ck, scale, order):
    """One softmax per query, written out entry by entry: the keys of its clusters in every round (with repeats)
    and, for every other cluster of round 0, a summary with logit s q.kbar + log(ck H) and its (Taylor) value."""
    n_hashes, rows, nq = perm_q.shape
    nc = nq // cq
    out = torch.zeros(rows, nq, v.shape[-1], dtype=q.dtype)
    for b in range(rows):
        for i in range(nq):
            logits, values = [], []
            for t in range(n_hashes):
                own = int((perm_q[t, b] == i).nonzero()) // cq
                for c in range(nc):
                    keys = perm_k[t, b, c * ck:(c + 1) * ck]
                    if c == own:
                        logits += [scale * q[b, i] @ k[b, j] for j in keys]
                        values += [v[b, j] for j in keys]
                    elif t == 0:
                        k_c, v_c = k[b, keys], v[b, keys]
                        logits.append(scale * q[b, i] @ k_c.mean(0) + math.log(ck * n_hashes))
                        value = v_c.mean(0)
                        if order == "taylor":
                            k_dev = k_c - k_c.mean(0)
                            sigma = (scale**2 * q[b, i] @ (k_dev.T @ k_dev / ck) @ q[b, i]).sqrt()
                            value = value + scale * min(1.0, 1.0 / float(sigma.detach())) * (k_dev.T @ v_c / ck).T @ q[b, i]
                        values.append(value)
            probs = torch.softmax(torch.stack(logits), 0)
            out[b, i] = (probs.unsqueeze(-1) * torch.stack(values)).sum(0)
    return out


@pytest.mark.parametrize("order", ["mean", "taylor"])
@pytest.mark.parametrize("impl,kernel", IMPLS)
def test_summaries_equal_the_explicit_softmax(order, impl, kernel):
    q, k, v = _qkv()
    proj = draw_projections(3, 2, torch.Generator().manual_seed(1))
    out, (perm_q, perm_k) = smyrf_attention(q, k, v, n_hashes=2, q_cluster_size=4, k_cluster_size=2, scale=0.8,
                                            projections=proj, summary=order, impl=impl, kernel=kernel,
                                            return_clusters=True)
    torch.testing.assert_close(out, _oracle(q, k, v, perm_q, perm_k, 4, 2, 0.8, order), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order", ["mean", "taylor"])
@pytest.mark.parametrize("impl,kernel", IMPLS)
def test_gradcheck_float64(order, impl, kernel):
    q, k, v = _qkv(b=1, nq=8, nk=4, d=3, dv=2)
    proj = draw_projections(3, 2, torch.Generator().manual_seed(0))

    def fn(q, k, v):
        return smyrf_attention(q, k, v, n_hashes=2, q_cluster_size=2, k_cluster_size=1, scale=0.9,
                               projections=proj, impl=impl, kernel=kernel, summary=order)

    assert torch.autograd.gradcheck(fn, (q, k, v))


@pytest.mark.parametrize("order", ["mean", "taylor"])
def test_one_cluster_is_still_dense(order):
    q, k, v = _qkv(nq=12, nk=6)
    out = smyrf_attention(q, k, v, n_hashes=1, q_cluster_size=12, k_cluster_size=6, scale=0.7, summary=order,
                          generator=torch.Generator().manual_seed(0))
    exact = dense_attention(q, k, v, scale=0.7)
    torch.testing.assert_close(out, exact, rtol=1e-12, atol=1e-12)
    for g, g_ref in zip(torch.autograd.grad(out.sum(), (q, k, v)), torch.autograd.grad(exact.sum(), (q, k, v))):
        torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)


def test_fused_merge_equals_merge_softmax_in_float32():
    q, k, v = _qkv(b=3, nq=64, nk=32, d=8, dv=12, dtype=torch.float32)
    kw = dict(n_hashes=4, q_cluster_size=8, k_cluster_size=4, projections=draw_projections(8, 4), scale=0.5,
              summary="taylor")
    ref = smyrf_attention(q, k, v, impl="reference", **kw)
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for kernel in ("math", "flash"):
        out = smyrf_attention(q, k, v, impl="fused", kernel=kernel, **kw)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        for g, g_ref in zip(torch.autograd.grad(out.square().sum(), (q, k, v)), ref_grads):
            torch.testing.assert_close(g, g_ref, rtol=1e-3, atol=1e-4)  # fp32 sums in another order


def test_merge_softmax_is_the_softmax_of_the_union():
    logits = torch.randn(2, 5, 7, dtype=torch.float64) * 3
    values = torch.randn(2, 7, 4, dtype=torch.float64)
    a, b = slice(0, 3), slice(3, 7)
    part = lambda s: (torch.softmax(logits[..., s], -1) @ values[:, s], torch.logsumexp(logits[..., s], -1))  # noqa
    torch.testing.assert_close(merge_softmax(*part(a), *part(b)), torch.softmax(logits, -1) @ values)


def test_nothing_score_sized_is_saved_for_backward():
    """With nc = 32 clusters and dv = 4, any saved (B, Nq, nc) tensor would be 8x the output: none may exist."""
    q, k, v = _qkv(b=1, nq=256, nk=64, d=4, dv=4, dtype=torch.float32)
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: sizes.append(x.numel()) or x, lambda x: x):
        out = smyrf_attention(q, k, v, n_hashes=2, q_cluster_size=8, k_cluster_size=2, summary="taylor",
                              generator=torch.Generator().manual_seed(0))
    assert sizes and max(sizes) <= out.numel() * 2  # q, k, v, the perms (H, B, Nq), out, L: none score-sized
    out.sum().backward()
    assert all(torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0 for x in (q, k, v))


def test_determinism_and_bf16_autocast():
    q, k, v = _qkv(b=2, nq=128, nk=32, d=8, dv=16, dtype=torch.float32)
    kw = dict(n_hashes=2, q_cluster_size=32, k_cluster_size=8, scale=0.5, summary="taylor")
    first = smyrf_attention(q, k, v, generator=torch.Generator().manual_seed(3), **kw)
    again = smyrf_attention(q, k, v, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(first, again)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = smyrf_attention(q, k, v, generator=torch.Generator().manual_seed(3), **kw)
    assert low.dtype == torch.float32
    assert ((low - first).norm() / first.norm()).item() < 2e-2


def test_bad_arguments_raise():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="summary must be one of 'none', 'mean', 'taylor'"):
        smyrf_attention(q, k, v, n_hashes=1, q_cluster_size=4, k_cluster_size=2, summary="median")
    perm = torch.arange(16).expand(1, 2, 16)
    with pytest.raises(ValueError, match="need nc >= 2"):
        cluster_summaries(q, k, v, perm, torch.arange(8).expand(1, 2, 8), 1, 1.0)


def test_own_cluster_far_above_the_others_stays_finite():
    """A query whose own cluster's mean key scores 200 above every other cluster (attention sinks): no NaN."""
    q, k, v = _qkv(b=1, nq=8, nk=4, d=2, dv=3, dtype=torch.float32)
    with torch.no_grad():
        k[0, 0] = torch.tensor([200.0, 0.0])
        q[0] = torch.tensor([1.0, 0.0])
    perm_q, perm_k = torch.arange(8).view(1, 1, 8), torch.arange(4).view(1, 1, 4)  # key 0 in query cluster 0
    out, lse = cluster_summaries(q, k, v, perm_q, perm_k, 2, 1.0, "taylor")
    (out.sum() + lse.sum()).backward()
    assert all(torch.isfinite(t).all() for t in (out, lse, q.grad, k.grad, v.grad))


def test_logaddexp_equals_torch_values_and_gradients() -> None:
    """smyrf.summary.logaddexp (no host fallback on XLA) against torch.logaddexp, ties and large gaps included."""
    from smyrf.summary import logaddexp

    a = torch.tensor([0.0, 3.0, -50.0, 700.0, 1.5], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.0, -2.0, 40.0, 699.0, 1.5], dtype=torch.float64, requires_grad=True)
    a2, b2 = (t.detach().clone().requires_grad_() for t in (a, b))
    got, want = logaddexp(a, b), torch.logaddexp(a2, b2)
    torch.testing.assert_close(got, want)
    got.sum().backward(), want.sum().backward()
    torch.testing.assert_close(a.grad, a2.grad), torch.testing.assert_close(b.grad, b2.grad)
