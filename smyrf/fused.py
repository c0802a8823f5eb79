"""Memory-lean SMYRF attention: rounds in memory-bounded chunks forward, recomputation in backward.

Forward, per chunk of rounds (one round when a round's tensors are large, all rounds for small shapes, see
``_CHUNK_BYTES``): gather the rounds' sorted q, k, v; attend inside the nc clusters (a fused SDPA kernel or matmul +
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

``extra=(out_x, L_x)``: further softmax terms of the same queries (e.g. ``smyrf.summary``), merged exactly:
out = a out + b out_x with a = exp(L - L'), b = exp(L_x - L'), L' = logaddexp(L, L_x). The in-cluster gradient is
then the formula above with the merged (out, L') in place of (out, L) (pi = exp(S - L') and Delta = dout . out), i.e.
the same kernel calls on the saved merged pair, and the extra term gets dout_x = b dout, dL_x = b dout . (out_x - out).

Shape legend: B rows; Nq, Nk; d, dv; H rounds; nc clusters; cq, ck cluster sizes; hc rounds in a chunk;
``s_`` prefix = sorted order of a round.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

__all__ = ["Kernel", "resolve_kernel", "smyrf_fused"]

Kernel = Literal["auto", "flash", "math"]


def _flat_index(perm: Tensor) -> Tensor:
    """perm (H, B, N) -> (H, B*N) row indices into x.reshape(B*N, e). index_select/index_copy_ on a flat first axis
    measured ~5x faster on CPU than gather/scatter with an expanded (B, N, e) index, and stay static-shaped."""
    _, b, n = perm.shape
    offsets = torch.arange(b, device=perm.device).unsqueeze(-1) * n  # (B, 1)
    return (perm + offsets).flatten(1)  # (H, B*N)


def _pad_last(x: Tensor, size: int) -> Tensor:
    return x if x.shape[-1] == size else torch.nn.functional.pad(x, (0, size - x.shape[-1]))


# ---------------------------------------------------------------------------------------------------------------------
# Block kernels: attention inside clusters laid out as (B, nc, c, e), with nc in the place of SDPA's heads axis.


def _math_forward(s_q: Tensor, s_k: Tensor, s_v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    scores = torch.matmul(s_q, s_k.transpose(-1, -2)).mul_(scale)  # (B, nc, cq, ck)
    lse = torch.logsumexp(scores, dim=-1)  # (B, nc, cq)
    probs = scores.sub_(lse.unsqueeze(-1)).exp_()  # (B, nc, cq, ck), in place: one score-sized buffer
    return torch.matmul(probs, s_v), lse  # (B, nc, cq, dv), (B, nc, cq)


def _math_backward(
    dout: Tensor, s_q: Tensor, s_k: Tensor, s_v: Tensor, out: Tensor, lse: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    probs = torch.matmul(s_q, s_k.transpose(-1, -2)).mul_(scale)  # (B, nc, cq, ck)
    probs.sub_(lse.unsqueeze(-1).to(probs.dtype)).exp_()  # pi = exp(S - L), the final L
    d_v = torch.matmul(probs.transpose(-1, -2), dout)  # (B, nc, ck, dv)
    delta = (dout * out).sum(-1, keepdim=True)  # (B, nc, cq, 1)
    d_scores = torch.matmul(dout, s_v.transpose(-1, -2)).sub_(delta).mul_(probs)  # (B, nc, cq, ck)
    del probs
    d_q = torch.matmul(d_scores, s_k).mul_(scale)  # (B, nc, cq, d)
    d_k = torch.matmul(d_scores.transpose(-1, -2), s_q).mul_(scale)  # (B, nc, ck, d)
    return d_q, d_k, d_v


def _flash_forward(s_q: Tensor, s_k: Tensor, s_v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(s_q, s_k, s_v, 0.0, False, scale=scale)
    return out, lse  # (B, nc, cq, dv), (B, nc, cq)


def _flash_backward(
    dout: Tensor, s_q: Tensor, s_k: Tensor, s_v: Tensor, out: Tensor, lse: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    # The CPU flash backward computes Delta = rowsum(dout * out) and pi = exp(S - lse) itself: given the final
    # (out, L) it returns exactly this round's share of the multiset-union gradient (see module docstring).
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        dout, s_q, s_k, s_v, out, lse, 0.0, False, scale=scale
    )


def _head_sizes(kernel: str, d: int, dv: int) -> tuple[int, int]:
    """The fused CPU kernel needs one head size for q, k and v: q, k (or v) get zero columns, which change no logit
    and no output; they are padded once per call, not per round."""
    return (max(d, dv), max(d, dv)) if kernel == "flash" else (d, dv)


_FORWARD: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {"math": _math_forward, "flash": _flash_forward}
_BACKWARD: dict[str, Callable[..., tuple[Tensor, Tensor, Tensor]]] = {"math": _math_backward, "flash": _flash_backward}


def _flash_available(device: torch.device, dtype: torch.dtype) -> bool:
    return (
        device.type == "cpu"
        and dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)
        and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward")
    )


# Below this key cluster size the fused kernel loses to matmul + softmax on CPU: it pads q and k to dv (4x the q.k work
# at BigGAN's d = dv/4) and its 512-key blocks run part-empty. Measured fwd+bwd CPU time, Nq=16384, Nk=4096, H=4,
# cq=4ck, 1 thread: d=12/dv=48: ck=128 flash 0.14 s / math 0.17 s, ck=512 0.29 / 0.68; d=24/dv=96: ck=64 0.18 / 0.13,
# ck=128 0.23 / 0.19, ck=256 0.33 / 0.51, ck=512 0.50 / 0.86.
_FLASH_MIN_K_CLUSTER = 256


def resolve_kernel(kernel: Kernel, device: torch.device, dtype: torch.dtype, k_cluster_size: int) -> str:
    """Pick the block kernel. "auto": PyTorch's fused CPU flash-attention kernel on CPU for key clusters of at least
    256 (measured faster there, see ``_FLASH_MIN_K_CLUSTER``), matmul + softmax otherwise and on CUDA/XLA, where it is
    portable, static-shaped and needs no private op."""
    if kernel == "auto":
        use_flash = _flash_available(device, dtype) and k_cluster_size >= _FLASH_MIN_K_CLUSTER
        return "flash" if use_flash else "math"
    if kernel == "flash" and not _flash_available(device, dtype):
        raise ValueError(f"kernel='flash' needs a CPU tensor of a float dtype, got device={device}, dtype={dtype}")
    if kernel not in _FORWARD:
        raise ValueError(f"kernel must be 'auto', 'flash' or 'math', got {kernel!r}")
    return kernel


# Rounds are processed in chunks whose transient tensors stay under a budget (at least one round per chunk): chunking
# bounds memory like one-round-at-a-time, while small shapes need H times fewer kernel calls. Measured on CPU, fwd+bwd:
# the math kernel's batched scores fall out of cache (G128@64, 1 thread: 8-round chunks 0.078 s, single rounds
# 0.050 s), so it gets a small budget; the flash kernel materialises no scores and its 4-round chunks at G128@128 ran
# as fast alone (0.31 s) and faster on a busy 2-core machine (0.57 s against 0.82 s CPU time).
_CHUNK_BYTES = {"flash": 64 * 2**20, "math": 16 * 2**20}


def _round_chunks(n_hashes: int, b: int, nq: int, nk: int, ck: int, ed: int, ev: int, kernel: str, itemsize: int):
    """Split the H rounds into consecutive chunks [(t0, t1), ...] within the transient-memory budget."""
    gathered = nq * (ed + 3 * ev) + nk * 2 * (ed + ev)  # q, dout, out, unsorted out; k, v and their gradients
    scores = 3 * nq * ck if kernel == "math" else 0  # math materialises scores, probabilities, their gradient
    per_round = b * itemsize * (gathered + scores)
    size = max(1, min(n_hashes, _CHUNK_BYTES[kernel] // max(per_round, 1)))
    return [(t, min(t + size, n_hashes)) for t in range(0, n_hashes, size)]


def _chunk_dest(idx: Tensor, t0: int, t1: int) -> Tensor:
    """Rows of rounds t0..t1 of ``idx`` (H, B*N) in an (hc*B*N,) stack of their outputs (round r offset by r*B*N)."""
    rows = idx.shape[1]
    offsets = torch.arange(t1 - t0, device=idx.device).unsqueeze(-1) * rows  # (hc, 1)
    return (idx[t0:t1] + offsets).reshape(-1)  # (hc*B*N,)


def _unsort_rows(x: Tensor, dest: Tensor, rows: int) -> Tensor:
    """x (hc*B*N, e) in sorted order -> (hc, B*N, e) in original order, by one index_copy_ (a scatter)."""
    out = torch.empty(dest.numel(), x.shape[-1], dtype=x.dtype, device=x.device)
    return out.index_copy_(0, dest, x).view(-1, rows, x.shape[-1])  # (hc, B*N, e)


def _flat_operands(
    q: Tensor, k: Tensor, v: Tensor, perm_q: Tensor, perm_k: Tensor, nc: int, kernel: str
) -> tuple[tuple[int, ...], Tensor, Tensor, Tensor, Tensor, Tensor]:
    """What forward and backward both start from: sizes, flat round indices and head-padded flat q, k, v.

    Returns ``((H, B, Nq, Nk, dv, cq, ck, ed, ev), idx_q (H, B*Nq), idx_k (H, B*Nk), q (B*Nq, ed), k (B*Nk, ed),
    v (B*Nk, ev))``.
    """
    n_hashes, b, nq = perm_q.shape
    nk, d, dv = k.shape[1], q.shape[-1], v.shape[-1]
    ed, ev = _head_sizes(kernel, d, dv)
    sizes = (n_hashes, b, nq, nk, dv, nq // nc, nk // nc, ed, ev)
    q_flat = _pad_last(q, ed).reshape(b * nq, ed)  # (B*Nq, ed)
    k_flat = _pad_last(k, ed).reshape(b * nk, ed)  # (B*Nk, ed)
    v_flat = _pad_last(v, ev).reshape(b * nk, ev)  # (B*Nk, ev)
    return sizes, _flat_index(perm_q), _flat_index(perm_k), q_flat, k_flat, v_flat


class _SmyrfFunction(torch.autograd.Function):
    """q, k, v (B, N, .) and fixed permutations (H, B, N) -> out (B, Nq, dv). Permutations get no gradient."""

    @staticmethod
    def forward(
        ctx, q: Tensor, k: Tensor, v: Tensor, perm_q: Tensor, perm_k: Tensor, nc: int, scale: float, kernel: str,
        out_x: Tensor | None = None, lse_x: Tensor | None = None,
    ) -> Tensor:
        sizes, idx_q, idx_k, q_flat, k_flat, v_flat = _flat_operands(q, k, v, perm_q, perm_k, nc, kernel)
        n_hashes, b, nq, nk, dv, cq, ck, ed, ev = sizes
        acc_dtype = torch.promote_types(q.dtype, torch.float32)
        acc = lse_run = None
        for t0, t1 in _round_chunks(n_hashes, b, nq, nk, ck, ed, ev, kernel, q.element_size()):
            hc = t1 - t0
            iq, ik = idx_q[t0:t1], idx_k[t0:t1]  # (hc, B*Nq), (hc, B*Nk)
            s_q = q_flat.index_select(0, iq.reshape(-1)).view(hc * b, nc, cq, ed)  # (hc*B, nc, cq, ed)
            s_k = k_flat.index_select(0, ik.reshape(-1)).view(hc * b, nc, ck, ed)  # (hc*B, nc, ck, ed)
            s_v = v_flat.index_select(0, ik.reshape(-1)).view(hc * b, nc, ck, ev)  # (hc*B, nc, ck, ev)
            s_out, s_lse = _FORWARD[kernel](s_q, s_k, s_v, scale)  # (hc*B, nc, cq, ev), (hc*B, nc, cq)
            del s_q, s_k, s_v
            dest = _chunk_dest(idx_q, t0, t1)  # (hc*B*Nq,)
            out_c = _unsort_rows(s_out.reshape(-1, ev).to(acc_dtype), dest, b * nq)  # (hc, B*Nq, ev)
            lse_c = _unsort_rows(s_lse.reshape(-1, 1).to(acc_dtype), dest, b * nq)  # (hc, B*Nq, 1)
            del s_out, s_lse
            # Merge the chunk's rounds (softmax over their logsumexp), then into the running result online.
            lse_new = torch.logsumexp(lse_c, dim=0) if lse_run is None else torch.logsumexp(
                torch.cat([lse_c, lse_run.unsqueeze(0)]), dim=0)  # (B*Nq, 1)
            merged = (out_c * torch.exp(lse_c - lse_new)).sum(0)  # (B*Nq, ev)
            acc = merged if acc is None else merged.add_(acc.mul_(torch.exp(lse_run - lse_new)))
            lse_run = lse_new
            del out_c, lse_c
        acc = acc[:, :dv]  # (B*Nq, dv)
        if out_x is not None:  # merge the extra softmax terms (module docstring); save the merged (out, L)
            lse_flat = lse_x.reshape(-1, 1).to(acc_dtype)  # (B*Nq, 1)
            lse_new = torch.logaddexp(lse_run, lse_flat)
            acc = acc * torch.exp(lse_run - lse_new) + out_x.reshape(-1, dv).to(acc_dtype) * torch.exp(lse_flat - lse_new)
            lse_run = lse_new
        out = acc.to(q.dtype).reshape(b, nq, dv).contiguous()  # (B, Nq, dv)
        ctx.save_for_backward(q, k, v, perm_q, perm_k, out, lse_run, out_x, lse_x)
        ctx.nc, ctx.scale, ctx.kernel = nc, scale, kernel
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout: Tensor):
        q, k, v, perm_q, perm_k, out, lse, out_x, lse_x = ctx.saved_tensors
        nc, scale, kernel = ctx.nc, ctx.scale, ctx.kernel
        sizes, idx_q, idx_k, q_flat, k_flat, v_flat = _flat_operands(q, k, v, perm_q, perm_k, nc, kernel)
        n_hashes, b, nq, nk, dv, cq, ck, ed, ev = sizes
        dout_flat = _pad_last(dout.to(q.dtype), ev).reshape(b * nq, ev)  # (B*Nq, ev)
        out_flat = _pad_last(out, ev).reshape(b * nq, ev)  # (B*Nq, ev)
        grad_dtype = torch.promote_types(q.dtype, torch.float32)
        d_q = torch.zeros(b * nq, ed, dtype=grad_dtype, device=q.device)  # (B*Nq, ed)
        d_k = torch.zeros(b * nk, ed, dtype=grad_dtype, device=q.device)  # (B*Nk, ed)
        d_v = torch.zeros(b * nk, ev, dtype=grad_dtype, device=q.device)  # (B*Nk, ev)
        for t0, t1 in _round_chunks(n_hashes, b, nq, nk, ck, ed, ev, kernel, q.element_size()):
            hc = t1 - t0
            iq, ik = idx_q[t0:t1].reshape(-1), idx_k[t0:t1].reshape(-1)  # (hc*B*Nq,), (hc*B*Nk,)
            s_q = q_flat.index_select(0, iq).view(hc * b, nc, cq, ed)  # (hc*B, nc, cq, ed)
            s_k = k_flat.index_select(0, ik).view(hc * b, nc, ck, ed)  # (hc*B, nc, ck, ed)
            s_v = v_flat.index_select(0, ik).view(hc * b, nc, ck, ev)  # (hc*B, nc, ck, ev)
            s_dout = dout_flat.index_select(0, iq).view(hc * b, nc, cq, ev)  # (hc*B, nc, cq, ev)
            s_out = out_flat.index_select(0, iq).view(hc * b, nc, cq, ev)  # (hc*B, nc, cq, ev)
            s_lse = lse.index_select(0, iq).view(hc * b, nc, cq)  # (hc*B, nc, cq), the final L in round order
            s_dq, s_dk, s_dv = _BACKWARD[kernel](s_dout, s_q, s_k, s_v, s_out, s_lse, scale)
            del s_q, s_k, s_v, s_dout, s_out, s_lse
            # Unsort each round with unique indices, then sum over the chunk's rounds: deterministic on every backend.
            dest_q, dest_k = _chunk_dest(idx_q, t0, t1), _chunk_dest(idx_k, t0, t1)  # (hc*B*Nq,), (hc*B*Nk,)
            d_q += _unsort_rows(s_dq.reshape(-1, ed).to(grad_dtype), dest_q, b * nq).sum(0)  # (B*Nq, ed)
            d_k += _unsort_rows(s_dk.reshape(-1, ed).to(grad_dtype), dest_k, b * nk).sum(0)  # (B*Nk, ed)
            d_v += _unsort_rows(s_dv.reshape(-1, ev).to(grad_dtype), dest_k, b * nk).sum(0)  # (B*Nk, ev)
        d = q.shape[-1]
        d_q = d_q[:, :d].reshape(b, nq, d).to(q.dtype)  # (B, Nq, d)
        d_k = d_k[:, :d].reshape(b, nk, d).to(k.dtype)  # (B, Nk, d)
        d_v = d_v[:, :dv].reshape(b, nk, dv).to(v.dtype)  # (B, Nk, dv)
        d_out_x = d_lse_x = None
        if out_x is not None:
            weight = torch.exp(lse_x.reshape(b, nq, 1) - lse.view(b, nq, 1))  # (B, Nq, 1): the extra terms' share
            d_out_x = (weight * dout).to(out_x.dtype)  # (B, Nq, dv)
            d_lse_x = (weight * dout * (out_x - out)).sum(-1).to(lse_x.dtype)  # (B, Nq)
        return d_q, d_k, d_v, None, None, None, None, None, d_out_x, d_lse_x


def smyrf_fused(
    q: Tensor, k: Tensor, v: Tensor, perm_q: Tensor, perm_k: Tensor, nc: int, scale: float, kernel: str,
    extra: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Memory-lean SMYRF on flattened rows: q (B, Nq, d), k (B, Nk, d), v (B, Nk, dv), perms (H, B, N) -> (B, Nq, dv).

    q, k, v must share one dtype; ``kernel`` is a resolved name ("flash" or "math"). Not twice differentiable.
    ``extra``: (out_x (B, Nq, dv), L_x (B, Nq)) of further softmax terms of the same queries, merged into the result
    exactly and differentiably (module docstring); ``smyrf.summary`` provides them.
    """
    out_x, lse_x = extra if extra is not None else (None, None)
    return _SmyrfFunction.apply(
        q.contiguous(), k.contiguous(), v.contiguous(), perm_q, perm_k, nc, scale, kernel, out_x, lse_x
    )
