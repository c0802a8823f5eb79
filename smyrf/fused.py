"""Memory-lean SMYRF attention: one round at a time forward, recomputation in backward.

Forward, per round t: gather the round's sorted q, k, v; attend inside the nc clusters (a fused SDPA kernel or
matmul + softmax); scatter the round output and its logsumexp straight into original query order; merge into a running
(out, L) with the online logsumexp update. Only q, k, v, the permutations, the final output and the final logsumexp
L (B, Nq) are saved; no (H, B, Nq, dv) tensor and no score tensor outlives its round.

Backward. SMYRF is softmax attention over the multiset union of the keys a query met: with pi_tij = exp(S_tij - L_i)
(S_tij = s q_i . k_j for key j in query i's round-t cluster; sum_tj pi_tij = 1), out_i = sum_tj pi_tij v_j. So, exactly
as in flash-attention backward but with the *final* L in place of a per-round logsumexp,

    dv_j += sum pi_tij dout_i,   dS_tij = pi_tij (dout_i . v_j - Delta_i),   Delta_i = dout_i . out_i,
    dq_i += s sum dS_tij k_j,    dk_j += s sum dS_tij q_i.

The round-merge weights need no separate term: w_t = exp(l_t - L) is already folded into pi. Each round's contribution
is therefore one standard attention backward on its clusters, called with (out, L) gathered into that round's order,
and its gradients are scatter-added back to original order (each index exactly once per round).

Shape legend: B rows; Nq, Nk; d, dv; H rounds; nc clusters; cq, ck cluster sizes; ``s_`` prefix = sorted order of a round.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

__all__ = ["Kernel", "resolve_kernel", "smyrf_fused"]

Kernel = Literal["auto", "flash", "math"]


def _gather_rows(x: Tensor, perm: Tensor) -> Tensor:
    """x (B, N, e), perm (B, N) -> x[b, perm[b, i]] as (B, N, e)."""
    return x.gather(1, perm.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, N, e)


def _scatter_rows(x: Tensor, perm: Tensor) -> Tensor:
    """Inverse of _gather_rows for a permutation: out[b, perm[b, i]] = x[b, i]. One scatter, no second argsort."""
    return torch.empty_like(x).scatter_(1, perm.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x)  # (B, N, e)


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


def _pad_last(x: Tensor, size: int) -> Tensor:
    return x if x.shape[-1] == size else torch.nn.functional.pad(x, (0, size - x.shape[-1]))


def _flash_forward(s_q: Tensor, s_k: Tensor, s_v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    # The fused kernel needs one head size for q, k and v: zero columns change no logit and no output.
    e = max(s_q.shape[-1], s_v.shape[-1])
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        _pad_last(s_q, e), _pad_last(s_k, e), _pad_last(s_v, e), 0.0, False, scale=scale
    )
    return out[..., : s_v.shape[-1]], lse  # (B, nc, cq, dv), (B, nc, cq)


def _flash_backward(
    dout: Tensor, s_q: Tensor, s_k: Tensor, s_v: Tensor, out: Tensor, lse: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    # The CPU flash backward computes Delta = rowsum(dout * out) and pi = exp(S - lse) itself: given the final
    # (out, L) it returns exactly this round's share of the multiset-union gradient (see module docstring).
    d, dv = s_q.shape[-1], s_v.shape[-1]
    e = max(d, dv)
    d_q, d_k, d_v = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        _pad_last(dout, e), _pad_last(s_q, e), _pad_last(s_k, e), _pad_last(s_v, e), _pad_last(out, e), lse,
        0.0, False, scale=scale,
    )
    return d_q[..., :d], d_k[..., :d], d_v[..., :dv]


_FORWARD: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {"math": _math_forward, "flash": _flash_forward}
_BACKWARD: dict[str, Callable[..., tuple[Tensor, Tensor, Tensor]]] = {"math": _math_backward, "flash": _flash_backward}


def _flash_available(device: torch.device, dtype: torch.dtype) -> bool:
    return (
        device.type == "cpu"
        and dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)
        and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward")
    )


def resolve_kernel(kernel: Kernel, device: torch.device, dtype: torch.dtype) -> str:
    """Pick the block kernel. "auto": PyTorch's fused CPU flash-attention kernel on CPU (measured faster than matmul +
    softmax at the BigGAN shapes, see benchmarks/attention.py), matmul + softmax elsewhere (CUDA, XLA), where it is
    portable, static-shaped and has no private-op dependency."""
    if kernel == "auto":
        return "flash" if _flash_available(device, dtype) else "math"
    if kernel == "flash" and not _flash_available(device, dtype):
        raise ValueError(f"kernel='flash' needs a CPU tensor of a float dtype, got device={device}, dtype={dtype}")
    if kernel not in _FORWARD:
        raise ValueError(f"kernel must be 'auto', 'flash' or 'math', got {kernel!r}")
    return kernel


class _SmyrfFunction(torch.autograd.Function):
    """q, k, v (B, N, .) and fixed permutations (H, B, N) -> out (B, Nq, dv). Permutations get no gradient."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, perm_q: Tensor, perm_k: Tensor, nc: int, scale: float, kernel: str):
        n_hashes, b, nq = perm_q.shape
        nk = perm_k.shape[-1]
        d, dv = q.shape[-1], v.shape[-1]
        cq, ck = nq // nc, nk // nc
        acc_dtype = torch.promote_types(q.dtype, torch.float32)
        acc = lse_run = None
        for t in range(n_hashes):
            s_q = _gather_rows(q, perm_q[t]).view(b, nc, cq, d)  # (B, nc, cq, d)
            s_k = _gather_rows(k, perm_k[t]).view(b, nc, ck, d)  # (B, nc, ck, d)
            s_v = _gather_rows(v, perm_k[t]).view(b, nc, ck, dv)  # (B, nc, ck, dv)
            s_out, s_lse = _FORWARD[kernel](s_q, s_k, s_v, scale)  # (B, nc, cq, dv), (B, nc, cq)
            del s_q, s_k, s_v
            out_t = _scatter_rows(s_out.reshape(b, nq, dv).to(acc_dtype), perm_q[t])  # (B, Nq, dv)
            lse_t = _scatter_rows(s_lse.reshape(b, nq, 1).to(acc_dtype), perm_q[t])  # (B, Nq, 1)
            del s_out, s_lse
            if acc is None:  # start from round 0, not from -inf (which invites NaN)
                acc, lse_run = out_t, lse_t
                continue
            lse_new = torch.logaddexp(lse_run, lse_t)  # (B, Nq, 1)
            acc.mul_(torch.exp(lse_run - lse_new)).add_(out_t.mul_(torch.exp(lse_t - lse_new)))
            lse_run = lse_new
        out = acc.to(q.dtype)
        ctx.save_for_backward(q, k, v, perm_q, perm_k, out, lse_run.squeeze(-1))
        ctx.nc, ctx.scale, ctx.kernel = nc, scale, kernel
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout: Tensor):
        q, k, v, perm_q, perm_k, out, lse = ctx.saved_tensors
        nc, scale, kernel = ctx.nc, ctx.scale, ctx.kernel
        n_hashes, b, nq = perm_q.shape
        nk = perm_k.shape[-1]
        d, dv = q.shape[-1], v.shape[-1]
        cq, ck = nq // nc, nk // nc
        dout = dout.to(q.dtype).contiguous()
        grad_dtype = torch.promote_types(q.dtype, torch.float32)
        d_q = torch.zeros(q.shape, dtype=grad_dtype, device=q.device)  # (B, Nq, d)
        d_k = torch.zeros(k.shape, dtype=grad_dtype, device=k.device)  # (B, Nk, d)
        d_v = torch.zeros(v.shape, dtype=grad_dtype, device=v.device)  # (B, Nk, dv)
        lse = lse.unsqueeze(-1)  # (B, Nq, 1)
        for t in range(n_hashes):
            pq, pk = perm_q[t], perm_k[t]  # (B, Nq), (B, Nk)
            s_q = _gather_rows(q, pq).view(b, nc, cq, d)  # (B, nc, cq, d)
            s_k = _gather_rows(k, pk).view(b, nc, ck, d)  # (B, nc, ck, d)
            s_v = _gather_rows(v, pk).view(b, nc, ck, dv)  # (B, nc, ck, dv)
            s_dout = _gather_rows(dout, pq).view(b, nc, cq, dv)  # (B, nc, cq, dv)
            s_out = _gather_rows(out, pq).view(b, nc, cq, dv)  # (B, nc, cq, dv)
            s_lse = _gather_rows(lse, pq).view(b, nc, cq)  # (B, nc, cq)
            s_dq, s_dk, s_dv = _BACKWARD[kernel](s_dout, s_q, s_k, s_v, s_out, s_lse, scale)
            del s_q, s_k, s_v, s_dout, s_out, s_lse
            # Each index occurs once per round, so these scatter-adds are deterministic on every backend.
            d_q.scatter_add_(1, pq.unsqueeze(-1).expand(-1, -1, d), s_dq.reshape(b, nq, d).to(grad_dtype))
            d_k.scatter_add_(1, pk.unsqueeze(-1).expand(-1, -1, d), s_dk.reshape(b, nk, d).to(grad_dtype))
            d_v.scatter_add_(1, pk.unsqueeze(-1).expand(-1, -1, dv), s_dv.reshape(b, nk, dv).to(grad_dtype))
        return d_q.to(q.dtype), d_k.to(k.dtype), d_v.to(v.dtype), None, None, None, None, None


def smyrf_fused(
    q: Tensor, k: Tensor, v: Tensor, perm_q: Tensor, perm_k: Tensor, nc: int, scale: float, kernel: str
) -> Tensor:
    """Memory-lean SMYRF on flattened rows: q (B, Nq, d), k (B, Nk, d), v (B, Nk, dv), perms (H, B, N) -> (B, Nq, dv).

    q, k, v must share one dtype; ``kernel`` is a resolved name ("flash" or "math"). Not twice differentiable.
    """
    return _SmyrfFunction.apply(q.contiguous(), k.contiguous(), v.contiguous(), perm_q, perm_k, nc, scale, kernel)
