"""Memory-lean SMYRF attention: rounds in memory-bounded chunks forward, recomputation in backward.

Forward, per chunk of rounds (one round when a round's tensors are large, all rounds for small shapes, see
``chunk_budget``): gather the rounds' sorted q, k, v; attend inside the nc clusters (a fused SDPA kernel or matmul +
softmax); scatter the outputs and their logsumexp straight into original query order; merge into a running (out, L)
with the online logsumexp update. Only q, k, v, the permutations, the final output and the final logsumexp L (B, Nq)
are saved; no (H, B, Nq, dv) tensor and no score tensor outlives its chunk.

Backward. SMYRF is softmax attention over the multiset union of the keys a query met: with pi_tij = exp(S_tij - L_i)
(S_tij = s q_i . k_j for key j in query i's round-t cluster; sum_tj pi_tij = 1), out_i = sum_tj pi_tij v_j. So, exactly
as in flash-attention backward but with the *final* L in place of a per-round logsumexp,

    dv_j += sum pi_tij dout_i,   dS_tij = pi_tij (dout_i . v_j - Delta_i),   Delta_i = dout_i . out_i,
    dq_i += s sum dS_tij k_j,    dk_j += s sum dS_tij q_i.

The round-merge weights need no separate term: w_t = exp(l_t - L) is already folded into pi. Each round's contribution
is therefore one standard attention backward on its clusters, called with (out, L) gathered into that round's order,
and its gradients are scattered back to original order and summed over rounds.

bf16. The round merge, the running (out, L) and the gradients accumulate in fp32; the saved output is the fp32
merge, not its bf16 rounding: Delta = dout . out must be formed from it, or near-saturated softmax rows (where
dout . v_j and Delta cancel) lose their dq (measured at logits ~30: 705 % worst per-row error in dq with the rounded
output, 0.3 % with the fp32 one). Kernels whose backward reads ``out`` in bf16 (the CUDA SDPA ops) get it with two
extra columns [r_hi, r_lo] carrying the rounding's share of Delta against two columns of ones in dout and zeros in v
(``_delta_operands``), so their Delta is the fp32 one at the cost of 2 (padded to 8) value columns in backward.

``extra=(out_x, L_x)``: further softmax terms of the same queries (e.g. ``smyrf.summary``), merged exactly:
out = a out + b out_x with a = exp(L - L'), b = exp(L_x - L'), L' = logaddexp(L, L_x). The in-cluster gradient is
then the formula above with the merged (out, L') in place of (out, L) (pi = exp(S - L') and Delta = dout . out), i.e.
the same kernel calls on the saved merged pair, and the extra term gets dout_x = b dout, dL_x = b dout . (out_x - out).

The block kernels are ``smyrf.kernels``; the gathers and scatters are ``smyrf.routing`` (flat index_select on CPU
and CUDA, batch-preserving row gathers on XLA for SPMD).

Shape legend: B rows; Nq, Nk; d, dv; H rounds; nc clusters; cq, ck cluster sizes; hc rounds in a chunk; R block rows
(hc * B); ``s_`` prefix = sorted order of a round.
"""

from __future__ import annotations

import torch
from torch import Tensor

from smyrf.kernels import BlockKernel, get_kernel
from smyrf.routing import Routing, default_routing, make_route
from smyrf.summary import logaddexp

__all__ = ["smyrf_fused", "chunk_budget"]

# Rounds are processed in chunks whose transient tensors stay under a budget (at least one round per chunk): chunking
# bounds memory like one-round-at-a-time, while small shapes need H times fewer kernel calls. Measured on CPU, fwd+bwd:
# the math kernel's batched scores fall out of cache (G128@64, 1 thread: 8-round chunks 0.078 s, single rounds
# 0.050 s), so it gets a small budget; the flash kernel materialises no scores and its 4-round chunks at G128@128 ran
# as fast alone (0.31 s) and faster on a busy 2-core machine (0.57 s against 0.82 s CPU time).
_CPU_CHUNK_BYTES = {"flash": 64 * 2**20}
_CPU_DEFAULT_CHUNK_BYTES = 16 * 2**20
# Off the CPU there is no cache to stay in, only memory: 512 MiB keeps the demo's and the test shapes' rounds in one
# launch and one G128@128 round at batch 32 (~230 MB of gathered operands, fused kernel) per chunk; it is < 1 % of an
# 80 GB GPU. Not measured on a GPU (benchmarks/smyrf_cuda_check.py times the kernels at the paper shapes).
_DEVICE_CHUNK_BYTES = 512 * 2**20


def chunk_budget(kernel: BlockKernel, device: torch.device) -> int:
    """Transient bytes a chunk of rounds may use with ``kernel`` on ``device``."""
    if device.type == "cpu":
        return _CPU_CHUNK_BYTES.get(kernel.name, _CPU_DEFAULT_CHUNK_BYTES)
    return _DEVICE_CHUNK_BYTES


def _round_chunks(n_hashes: int, per_round: int, budget: int) -> list[tuple[int, int]]:
    """Split the H rounds into consecutive chunks [(t0, t1), ...] of at most ``budget`` bytes (>= one round)."""
    size = max(1, min(n_hashes, budget // max(per_round, 1)))
    return [(t, min(t + size, n_hashes)) for t in range(0, n_hashes, size)]


def _per_round_bytes(kernel: BlockKernel, b: int, nq: int, nk: int, ck: int, ed: int, ev: int,
                     dtype: torch.dtype) -> int:
    """Transient bytes of one round: q, dout, out, unsorted out; k, v and their gradients (in the dtype the kernel
    computes in: fp32 for the upcasting ones); fp32 scores if the kernel materialises them."""
    itemsize = (dtype if kernel.lowp_out else torch.promote_types(dtype, torch.float32)).itemsize
    gathered = itemsize * (nq * (ed + 3 * ev) + nk * 2 * (ed + ev))
    scores = 3 * nq * ck * 4 if kernel.materialises_scores else 0  # scores, probabilities, their gradient (fp32)
    return b * (gathered + scores)


def _pad_last(x: Tensor, size: int) -> Tensor:
    return x if x.shape[-1] == size else torch.nn.functional.pad(x, (0, size - x.shape[-1]))


def _low_precision(kernel: BlockKernel, dtype: torch.dtype) -> bool:
    """Does the kernel's backward read the output in a dtype that cannot hold the fp32 merge exactly?"""
    return kernel.lowp_out and dtype not in (torch.float32, torch.float64)


def _delta_operands(dout: Tensor, out: Tensor, ev: int, dtype: torch.dtype, lowp: bool) -> tuple[Tensor, Tensor]:
    """The (dout, out) a kernel's backward reads, (B, Nq, ev) each, such that its rowsum(dout * out) is the fp32 Delta.

    dout (B, Nq, dv) in ``dtype``; out (B, Nq, dv), the fp32 merge. Without ``lowp`` the kernel reads the fp32 output
    (it computes in fp32). With it: dout_k = [dout, 1, 1, 0...], out_k = [round(out), r_hi, r_lo, 0...], where
    r = dout . out - dout . round(out) in fp32 and r_hi + r_lo is r in two ``dtype`` numbers; v gets zero columns
    there, so dout_k . v_k = dout . v and only Delta changes.
    """
    if not lowp:
        return _pad_last(dout, ev), _pad_last(out, ev)
    out_low = out.to(dtype)  # (B, Nq, dv)
    dout32 = dout.float()
    residual = (dout32 * out).sum(-1, keepdim=True) - (dout32 * out_low.float()).sum(-1, keepdim=True)  # (B, Nq, 1)
    r_hi = residual.to(dtype)
    r_lo = (residual - r_hi.float()).to(dtype)
    ones = torch.ones_like(r_hi)
    dout_k = _pad_last(torch.cat([dout, ones, ones], dim=-1), ev)  # (B, Nq, ev)
    out_k = _pad_last(torch.cat([out_low, r_hi, r_lo], dim=-1), ev)  # (B, Nq, ev)
    return dout_k, out_k


def _forward_rounds(q, k, v, route_q, route_k, kernel, nc, scale, n_hashes):
    """All rounds, chunk by chunk, merged online: acc (B, Nq, ev) and lse_run (B, Nq, 1), both fp32 (fp64 for fp64)."""
    b, nq, d = q.shape
    nk, dv = k.shape[1], v.shape[-1]
    cq, ck = nq // nc, nk // nc
    ed, ev = kernel.widths(d, dv)
    q, k, v = _pad_last(q, ed), _pad_last(k, ed), _pad_last(v, ev)  # zero columns: no logit, no output changes
    acc_dtype = torch.promote_types(q.dtype, torch.float32)
    per_round = _per_round_bytes(kernel, b, nq, nk, ck, ed, ev, q.dtype)
    acc = lse_run = None
    for t0, t1 in _round_chunks(n_hashes, per_round, chunk_budget(kernel, q.device)):
        s_q = route_q.sort(q, t0, t1).view(-1, nc, cq, ed)  # (R, nc, cq, ed)
        s_k = route_k.sort(k, t0, t1).view(-1, nc, ck, ed)  # (R, nc, ck, ed)
        s_v = route_k.sort(v, t0, t1).view(-1, nc, ck, ev)  # (R, nc, ck, ev)
        s_out, s_lse = kernel.forward(s_q, s_k, s_v, scale)  # (R, nc, cq, ev), (R, nc, cq)
        del s_q, s_k, s_v
        out_c = route_q.unsort(s_out.reshape(-1, nq, ev).to(acc_dtype), t0, t1)  # (hc, B, Nq, ev)
        lse_c = route_q.unsort(s_lse.reshape(-1, nq, 1).to(acc_dtype), t0, t1)  # (hc, B, Nq, 1)
        del s_out, s_lse
        # Merge the chunk's rounds (softmax over their logsumexp), then into the running result online.
        lse_new = torch.logsumexp(lse_c if lse_run is None else torch.cat([lse_c, lse_run.unsqueeze(0)]), dim=0)
        merged = (out_c * torch.exp(lse_c - lse_new)).sum(0)  # (B, Nq, ev)
        acc = merged if acc is None else merged.add_(acc.mul_(torch.exp(lse_run - lse_new)))
        lse_run = lse_new  # (B, Nq, 1)
        del out_c, lse_c
    return acc, lse_run


def _backward_rounds(dout, q, k, v, out, lse, route_q, route_k, kernel, nc, scale, n_hashes):
    """Gradients of all rounds against the final (out, L), summed in fp32: d_q (B, Nq, ed), d_k (B, Nk, ed), d_v
    (B, Nk, ev), still padded."""
    b, nq, d = q.shape
    nk, dv = k.shape[1], v.shape[-1]
    cq, ck = nq // nc, nk // nc
    lowp = _low_precision(kernel, q.dtype)
    ed, ev = kernel.widths(d, dv + 2 if lowp else dv)
    q, k, v = _pad_last(q, ed), _pad_last(k, ed), _pad_last(v, ev)
    dout_k, out_k = _delta_operands(dout.to(q.dtype), out, ev, q.dtype, lowp)  # (B, Nq, ev) each
    grad_dtype = torch.promote_types(q.dtype, torch.float32)
    d_q = torch.zeros(b, nq, ed, dtype=grad_dtype, device=q.device)
    d_k = torch.zeros(b, nk, ed, dtype=grad_dtype, device=q.device)
    d_v = torch.zeros(b, nk, ev, dtype=grad_dtype, device=q.device)
    per_round = _per_round_bytes(kernel, b, nq, nk, ck, ed, ev, q.dtype)
    for t0, t1 in _round_chunks(n_hashes, per_round, chunk_budget(kernel, q.device)):
        s_q = route_q.sort(q, t0, t1).view(-1, nc, cq, ed)  # (R, nc, cq, ed)
        s_k = route_k.sort(k, t0, t1).view(-1, nc, ck, ed)  # (R, nc, ck, ed)
        s_v = route_k.sort(v, t0, t1).view(-1, nc, ck, ev)  # (R, nc, ck, ev)
        s_dout = route_q.sort(dout_k, t0, t1).view(-1, nc, cq, ev)  # (R, nc, cq, ev)
        s_out = route_q.sort(out_k, t0, t1).view(-1, nc, cq, ev)  # (R, nc, cq, ev)
        s_lse = route_q.sort(lse, t0, t1).view(-1, nc, cq)  # (R, nc, cq), the final L in round order
        s_dq, s_dk, s_dv = kernel.backward(s_dout, s_q, s_k, s_v, s_out, s_lse, scale)
        del s_q, s_k, s_v, s_dout, s_out, s_lse
        # Unsort each round with unique indices, then sum over the chunk's rounds: deterministic on every backend.
        d_q += route_q.unsort(s_dq.reshape(-1, nq, ed).to(grad_dtype), t0, t1).sum(0)  # (B, Nq, ed)
        d_k += route_k.unsort(s_dk.reshape(-1, nk, ed).to(grad_dtype), t0, t1).sum(0)  # (B, Nk, ed)
        d_v += route_k.unsort(s_dv.reshape(-1, nk, ev).to(grad_dtype), t0, t1).sum(0)  # (B, Nk, ev)
    return d_q, d_k, d_v


class _SmyrfFunction(torch.autograd.Function):
    """q, k, v (B, N, .) and fixed permutations (H, B, N) -> out (B, Nq, dv). Permutations get no gradient."""

    @staticmethod
    def forward(ctx, q, k, v, perm_q, perm_k, nc: int, scale: float, kernel_name: str, routing: Routing,
                out_x: Tensor | None, lse_x: Tensor | None) -> Tensor:
        kernel = get_kernel(kernel_name, q.device)
        route_q, route_k = make_route(perm_q, routing), make_route(perm_k, routing)
        acc, lse = _forward_rounds(q, k, v, route_q, route_k, kernel, nc, scale, perm_q.shape[0])
        dv = v.shape[-1]
        out = acc if acc.shape[-1] == dv else acc[..., :dv].contiguous()  # (B, Nq, dv), the fp32 merge
        if out_x is not None:  # merge the extra softmax terms (module docstring); the merged (out, L) is saved
            lse_x32 = lse_x.unsqueeze(-1).to(lse.dtype)  # (B, Nq, 1)
            merged = logaddexp(lse, lse_x32)  # (B, Nq, 1); torch.logaddexp runs on the host on XLA
            out = out * torch.exp(lse - merged) + out_x.to(out.dtype) * torch.exp(lse_x32 - merged)  # (B, Nq, dv)
            lse = merged
        ctx.save_for_backward(q, k, v, perm_q, perm_k, out, lse, out_x, lse_x)
        ctx.nc, ctx.scale, ctx.kernel_name, ctx.routing = nc, scale, kernel_name, routing
        return out.to(q.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout: Tensor):
        q, k, v, perm_q, perm_k, out, lse, out_x, lse_x = ctx.saved_tensors
        kernel = get_kernel(ctx.kernel_name, q.device)
        route_q, route_k = make_route(perm_q, ctx.routing), make_route(perm_k, ctx.routing)
        d_q, d_k, d_v = _backward_rounds(
            dout, q, k, v, out, lse, route_q, route_k, kernel, ctx.nc, ctx.scale, perm_q.shape[0]
        )
        d, dv = q.shape[-1], v.shape[-1]
        grads = ((d_q[..., :d], q), (d_k[..., :d], k), (d_v[..., :dv], v))  # unpadded, in the inputs' dtypes
        d_q, d_k, d_v = (g.to(x.dtype).contiguous() for g, x in grads)
        d_out_x = d_lse_x = None
        if out_x is not None:
            weight = torch.exp(lse_x.unsqueeze(-1).to(lse.dtype) - lse)  # (B, Nq, 1): the extra terms' share
            dout32 = dout.to(out.dtype)
            d_out_x = (weight * dout32).to(out_x.dtype)  # (B, Nq, dv)
            d_lse_x = (weight * dout32 * (out_x.to(out.dtype) - out)).sum(-1).to(lse_x.dtype)  # (B, Nq)
        return d_q, d_k, d_v, None, None, None, None, None, None, d_out_x, d_lse_x


def smyrf_fused(
    q: Tensor, k: Tensor, v: Tensor, perm_q: Tensor, perm_k: Tensor, nc: int, scale: float, kernel: str,
    routing: Routing | None = None, extra: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Memory-lean SMYRF on flattened rows: q (B, Nq, d), k (B, Nk, d), v (B, Nk, dv), perms (H, B, N) -> (B, Nq, dv).

    q, k, v must share one dtype; ``kernel`` is a resolved name (``smyrf.kernel_choice``) available on q's device;
    ``routing`` defaults to :func:`smyrf.routing.default_routing`. ``extra``: (out_x (B, Nq, dv), L_x (B, Nq)) of
    further softmax terms of the same queries, merged in exactly and differentiably (module docstring);
    ``smyrf.summary`` provides them. Not twice differentiable.
    """
    routing = routing or default_routing(q.device)
    out_x, lse_x = extra if extra is not None else (None, None)
    return _SmyrfFunction.apply(
        q.contiguous(), k.contiguous(), v.contiguous(), perm_q, perm_k, nc, scale, kernel, routing, out_x, lse_x
    )
