"""SMYRF's block kernels and their glue: bf16 accuracy, routing forms, the CUDA ops' contracts, the kernel choice.

The CUDA kernels run here on CPU tensors through exact stand-ins of their aten ops (tests/smyrf_standins.py); their
real calls are checked against the ops' meta kernels (shapes and argument parsing) and, on a GPU, by
benchmarks/smyrf_cuda_check.py.
"""

from __future__ import annotations

import pytest
import torch

import smyrf
import smyrf.fused
import smyrf.kernel_choice as choice
import smyrf.kernels
import smyrf.routing
from smyrf import smyrf_attention
from smyrf.fused import smyrf_fused
from smyrf.hashing import to_device

KERNELS = ["math", "flash", "flex", "efficient", "cuda_flash"]


@pytest.fixture(autouse=True)
def _cuda_kernels_here(cuda_kernels_on_cpu, monkeypatch):
    monkeypatch.setattr(choice, "_TUNED", {})


def _fp32_reference(q, k, v, dout):
    """fp32 attention on the bf16 values, SAGAN's scale 1: out, dq, dk, dv."""
    exact = [x.float().requires_grad_() for x in (q, k, v)]
    want = torch.softmax(exact[0] @ exact[1].transpose(-1, -2), dim=-1) @ exact[2]  # (B, Nq, dv)
    return [want, *torch.autograd.grad(want, exact, dout.float())]


def _upstream() -> torch.Tensor:
    return torch.randn(2, 256, 48, generator=torch.Generator().manual_seed(1)).bfloat16()  # (B, Nq, dv)


def bf16_errors(check, kernel: str, max_logit: float) -> list[float]:
    """Worst per-row relative error of out, dq, dk, dv: one round, one cluster (SMYRF == dense), bf16 inputs with the
    largest |logit| ``max_logit``, against fp32 attention on the same bf16 values and the same bf16 upstream gradient.
    ``check`` is benchmarks/smyrf_cuda_check.py, whose measures these are."""
    q, k, v = check.logit_scaled(max_logit, "cpu")
    dout = _upstream()
    low = [x.clone().requires_grad_() for x in (q, k, v)]
    got = smyrf_attention(*low, n_hashes=1, q_cluster_size=256, k_cluster_size=64, scale=1.0, kernel=kernel)
    assert got.dtype == torch.bfloat16
    return check.worst_row_errors([got, *torch.autograd.grad(got, low, dout)], _fp32_reference(q, k, v, dout))


def dense_op_errors(check, kernel: str, max_logit: float) -> list[float]:
    """The same errors of the kernel's own op used as plain dense SDPA uses it (its own out and lse in backward)."""
    q, k, v = check.logit_scaled(max_logit, "cpu")
    dout = _upstream()
    block = smyrf.kernels.get_kernel(kernel, torch.device("cpu"))
    ed, ev = block.widths(12, 48)
    s_q, s_k = (smyrf.fused._pad_last(x, ed).unsqueeze(1) for x in (q, k))  # (B, 1, N, ed)
    s_v = smyrf.fused._pad_last(v, ev).unsqueeze(1)  # (B, 1, Nk, ev)
    out, lse = block.forward(s_q, s_k, s_v, 1.0)
    grads = block.backward(smyrf.fused._pad_last(dout, ev).unsqueeze(1), s_q, s_k, s_v, out, lse, 1.0)
    got = [out[..., :48], grads[0][..., :12], grads[1][..., :12], grads[2][..., :48]]
    return check.worst_row_errors([x.squeeze(1) for x in got], _fp32_reference(q, k, v, dout))


@pytest.mark.parametrize("max_logit", [3, 14, 30])
@pytest.mark.parametrize("kernel", KERNELS)
def test_bf16_accuracy_of_every_kernel(kernel, max_logit, smyrf_cuda_check):
    """<= 1 % worst per-row error at logits up to 30 (torch's bf16 SDPA on CPU: ~0.3 %). Before, the math kernel
    computed scores, logsumexp and exp in bf16 and rounded L in backward (out 2.6 / 3.6 / 7.9 %, dq 3.1 / 64 / 1420 %
    at logits 3 / 14 / 30), and both CPU kernels formed Delta from the bf16-rounded output (CPU flash: dq 707 % at 30).

    The CUDA kernels round probabilities and score gradients to bf16 for their tensor-core matmuls (the stand-ins do
    too): their output and dv meet the bound, their dq and dk are what the same op gives for plain dense attention
    (in near-saturated rows, where dq is the difference of nearly equal terms, far above 1 %, as torch's CUDA SDPA).
    """
    out, d_q, d_k, d_v = bf16_errors(smyrf_cuda_check, kernel, max_logit)
    assert max(out, d_v) <= 0.01, f"{kernel} at logits ~{max_logit}: out {out:.4f}, dv {d_v:.4f}"
    if kernel in ("efficient", "cuda_flash"):
        _, dq_op, dk_op, _ = dense_op_errors(smyrf_cuda_check, kernel, max_logit)
        assert d_q <= dq_op * 1.01 + 1e-4 and d_k <= dk_op * 1.01 + 1e-4, (d_q, dq_op, d_k, dk_op)
    else:
        assert max(d_q, d_k) <= 0.01, f"{kernel} at logits ~{max_logit}: dq {d_q:.4f}, dk {d_k:.4f}"


def test_delta_operands_carry_the_fp32_delta():
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(3, 40, 48, generator=gen)  # (B, Nq, dv), an fp32 merge
    dout = torch.randn(3, 40, 48, generator=gen).bfloat16()
    dout_k, out_k = smyrf.fused._delta_operands(dout, out, 56, torch.bfloat16, lowp=True)
    assert dout_k.shape == out_k.shape == (3, 40, 56) and dout_k.dtype == out_k.dtype == torch.bfloat16
    exact = (dout.float() * out).sum(-1)
    carried = (dout_k.float() * out_k.float()).sum(-1)
    rounded = (dout.float() * out.bfloat16().float()).sum(-1)
    assert (carried - exact).abs().max() < 1e-4 * exact.abs().max() < (rounded - exact).abs().max()
    assert torch.equal(dout_k[..., :48], dout) and torch.equal(out_k[..., :48], out.bfloat16())
    assert (out_k[..., 50:] == 0).all() and (dout_k[..., 48:50] == 1).all()
    fp32_k = smyrf.fused._delta_operands(dout, out, 48, torch.bfloat16, lowp=False)
    assert fp32_k[1] is out  # kernels that compute in fp32 read the fp32 merge itself


# -- routing: the flat and the batch-preserving forms are one permutation ----------------------------------------------


@pytest.mark.parametrize("kernel", ["math", "flash", "efficient"])
def test_flat_and_batched_routing_agree(kernel):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, n, c, generator=gen, dtype=torch.float64) for n, c in ((64, 6), (32, 6), (32, 5)))
    _, (perm_q, perm_k) = smyrf_attention(q, k, v, n_hashes=3, q_cluster_size=16, k_cluster_size=8,
                                          generator=torch.Generator().manual_seed(1), return_clusters=True)
    dout = torch.randn(3, 64, 5, generator=gen, dtype=torch.float64)
    results = []
    for routing in ("flat", "batched"):
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        out = smyrf_fused(*leaves, perm_q, perm_k, 4, 0.7, kernel, routing=routing)
        results.append([out, *torch.autograd.grad(out, leaves, dout)])
    for flat, batched in zip(*results):
        torch.testing.assert_close(batched, flat, rtol=1e-13, atol=1e-13)


def test_routes_sort_and_unsort_one_permutation():
    perms = [torch.randperm(12, generator=torch.Generator().manual_seed(s)) for s in range(6)]
    perm = torch.stack(perms).view(3, 2, 12)  # (H, B, N)
    x = torch.randn(2, 12, 4, dtype=torch.float64)  # (B, N, e)
    for route in (smyrf.routing.FlatRoute(perm), smyrf.routing.BatchedRoute(perm)):
        s = route.sort(x, 1, 3)  # (R, N, e), R = 2 rounds x 2 rows
        assert s.shape == (4, 12, 4)
        back = route.unsort(s, 1, 3)  # (hc, B, N, e)
        torch.testing.assert_close(back, x.expand(2, -1, -1, -1), rtol=0, atol=0)
    for t in (1, 2):  # the flat form is round-major: row (t - 1) * B + b is round t of batch row b
        flat = smyrf.routing.FlatRoute(perm).sort(x, 1, 3).view(2, 2, 12, 4)[t - 1]
        torch.testing.assert_close(flat, x.gather(1, perm[t].unsqueeze(-1).expand(-1, -1, 4)), rtol=0, atol=0)
    assert smyrf.routing.default_routing(torch.device("cpu")) == "flat"
    assert smyrf.routing.default_routing(torch.device("xla", 0)) == "batched"
    with pytest.raises(ValueError, match="routing must be"):
        smyrf.routing.make_route(perm, "rows")


# -- the CUDA ops' real signatures, checked by their meta kernels ----------------------------------------------------


@pytest.mark.parametrize("name", ["efficient", "flash"])
def test_cuda_kernel_calls_match_the_real_ops(name, monkeypatch):
    """The real aten ops parse our arguments and return the shapes we slice (meta tensors: no GPU needed)."""
    monkeypatch.setattr(smyrf.kernels, "_aten", torch.ops.aten)
    block = smyrf.kernels.KERNELS[name]["cuda"]
    for dv in (48, 50):  # forward width, and backward with the two Delta columns
        ed, ev = block.widths(12, dv)
        assert ed % 8 == 0 and ev % 8 == 0 and (name == "efficient" or ed == ev)
        meta = dict(device="meta", dtype=torch.bfloat16)
        s_q, s_k = torch.empty(8, 4, 100, ed, **meta), torch.empty(8, 4, 25, ed, **meta)  # (R, nc, c, ed)
        s_v = torch.empty(8, 4, 25, ev, **meta)
        out, lse = block.forward(s_q, s_k, s_v, 1.0)
        assert out.shape == (8, 4, 100, ev) and lse.shape == (8, 4, 100) and lse.dtype == torch.float32
        d_q, d_k, d_v = block.backward(out, s_q, s_k, s_v, out, lse, 1.0)
        assert d_q.shape == s_q.shape and d_k.shape == s_k.shape and d_v.shape == s_v.shape


def test_kernel_widths_pad_bigan_shapes():
    widths = {(name, dev): block.widths(12, 48) for name, variants in smyrf.kernels.KERNELS.items()
              for dev, block in variants.items() if name in ("math", "flash", "efficient", "flex")}
    assert widths[("math", "*")] == (12, 48)  # no padding: the oracle
    assert widths[("flash", "cpu")] == widths[("flash", "cuda")] == (48, 48)  # one head size
    assert widths[("efficient", "cuda")] == (16, 48)  # q.k at K = 16, not 48
    assert smyrf.kernels.KERNELS["efficient"]["cuda"].widths(12, 50) == (16, 56)


# -- the kernel choice ------------------------------------------------------------------------------------------------


def test_rule_without_measurement():
    cpu, cuda, xla = torch.device("cpu"), torch.device("cuda"), torch.device("xla", 0)
    assert choice.resolve_kernel("auto", cpu, torch.float32, 512) == "flash"
    assert choice.resolve_kernel("auto", cpu, torch.bfloat16, 128) == "math"
    assert choice.resolve_kernel("auto", xla, torch.bfloat16, 512) == "math"
    with pytest.raises(ValueError, match="kernel must be 'auto' or one of"):
        choice.resolve_kernel("fast", cpu, torch.float32, 512)
    with pytest.raises(ValueError, match="not available for device=cpu, dtype=torch.float32"):
        choice.resolve_kernel("cuda_flash", cpu, torch.float32, 512)  # half precision only
    assert choice.resolve_kernel("math", xla, torch.float32, 64) == "math"
    assert choice._can_measure(cpu) is False and choice._can_measure(xla) is False
    # CUDA without measurement (compiling, capturing): the memory-efficient kernel, which needs no d == dv padding.
    assert choice.resolve_kernel("auto", cuda, torch.bfloat16, 512) == "efficient"


def _inputs(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, c, generator=gen, dtype=dtype) for n, c in ((64, 12), (16, 12), (16, 48)))
    _, (perm_q, perm_k) = smyrf_attention(q, k, v, n_hashes=2, q_cluster_size=16, k_cluster_size=4, kernel="math",
                                          generator=torch.Generator().manual_seed(1), return_clusters=True)
    return q, k, v, perm_q, perm_k


def test_measured_choice_picks_the_fastest_agreeing_kernel(monkeypatch):
    timed = []
    monkeypatch.setattr(choice, "_can_measure", lambda device: True)
    monkeypatch.setattr(choice, "_seconds", lambda name, args, device: timed.append(name) or {
        "efficient": 3.0, "flash": 1.0, "math": 2.0}[name])
    q, k, v, perm_q, perm_k = _inputs()
    assert choice.choose_kernel("auto", q, k, v, perm_q, perm_k, 4, 1.0) == "flash"
    assert sorted(timed) == ["efficient", "flash", "math"]
    assert choice.choose_kernel("auto", q, k, v, perm_q, perm_k, 4, 1.0) == "flash" and len(timed) == 3  # cached
    assert list(choice.tuned_kernels().values()) == ["flash"]
    assert choice.choose_kernel("math", q, k, v, perm_q, perm_k, 4, 1.0) == "math"  # explicit names are not measured


def test_measured_choice_drops_failing_and_wrong_kernels(monkeypatch):
    monkeypatch.setattr(choice, "_can_measure", lambda device: True)
    monkeypatch.setattr(choice, "_seconds", lambda name, args, device: {"efficient": 1.0, "flash": 2.0, "math": 3.0}[
        name])
    real_fwd_bwd = choice._fwd_bwd

    def broken(name, *args):
        if name == "efficient":
            raise RuntimeError("no kernel found to launch for these shapes\nmore")
        got = real_fwd_bwd(name, *args)
        return [g * 1.1 for g in got] if name == "flash" else got  # flash disagrees with math by 10 %

    monkeypatch.setattr(choice, "_fwd_bwd", broken)
    q, k, v, perm_q, perm_k = _inputs()
    with pytest.warns(UserWarning) as caught:
        assert choice.choose_kernel("auto", q, k, v, perm_q, perm_k, 4, 1.0) == "math"
    messages = " | ".join(str(w.message) for w in caught)
    assert "'efficient' failed here (no kernel found to launch for these shapes)" in messages
    assert "'flash' differs from math by 1.0e-01" in messages


def test_no_measurement_while_compiling(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert choice._can_measure(torch.device("cuda")) is False


# -- projections without a host sync -----------------------------------------------------------------------------------


class _HostTensor:
    """Records how :func:`to_device` moves it."""

    def __init__(self):
        self.device, self.calls = torch.device("cpu"), []

    def pin_memory(self):
        self.calls.append("pin_memory")
        return self

    def to(self, device, non_blocking=False):
        self.calls.append(("to", str(device), non_blocking))
        return self


def test_projections_reach_cuda_through_pinned_memory_without_blocking():
    host = _HostTensor()
    to_device(host, "cuda:0")
    assert host.calls == ["pin_memory", ("to", "cuda:0", True)]
    host = _HostTensor()
    to_device(host, torch.device("xla", 0))  # XLA: device data, an input of the graph
    assert host.calls == [("to", "xla:0", False)]
    x = torch.randn(3, 2)
    assert to_device(x, "cpu") is x


def test_host_draw_is_the_same_stream_on_every_device():
    a = smyrf.draw_projections(12, 4, torch.Generator().manual_seed(5), device="cpu")
    b = torch.randn(14, 4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_hash_is_exact_fp32_not_a_tf32_matmul():
    """Off the CPU the hash is d+2 multiply-adds (no TF32 matmul); both forms give the fp64 values to fp32 rounding."""
    gen = torch.Generator().manual_seed(0)
    q_lift, k_lift = torch.randn(2, 50, 14, generator=gen), torch.randn(2, 20, 14, generator=gen)
    for proj in (torch.randn(14, 3, generator=gen), torch.randn(14, 3, 2, generator=gen)):  # projection, kdtree
        pattern = "bnd,dh->hbn" if proj.dim() == 2 else "bnd,dhl->hbnl"
        want = [torch.einsum(pattern, x.double(), proj.double()).float() for x in (q_lift, k_lift)]
        cpu = smyrf.hash_rounds(q_lift, k_lift, proj)
        loop = [smyrf.hashing._project(x, proj, matmul=False) for x in (q_lift, k_lift)]  # as off the CPU
        for got in (*cpu, *loop):
            assert got.shape[0] == 3 and got.dtype == torch.float32
        for a, b in zip((*cpu, *loop), want * 2):
            torch.testing.assert_close(a, b)
