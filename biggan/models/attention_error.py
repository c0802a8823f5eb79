"""How far a SMYRF attention layer is from dense attention on one input: the numbers and pictures of the training
probe (``biggan.training.attention_probe``) and of ``sample.py --compare-attention``.

For the layer's own q, k, v on one image (no gradient): the relative error ||smyrf - dense|| / ||dense|| of the
attention output, the mean share of each query's dense softmax mass on the keys its clusters met (its H rounds), and,
for a few fixed query pixels, the dense attention map beside, per round, the keys that round's cluster gave the query.
The dense side runs in query chunks of ``_CHUNK`` rows, so at 256² (65,536 queries x 16,384 keys) it holds a
1024 x 16,384 score block (64 MiB in fp32), never the 4 GiB matrix.

Shape legend: Nq = h·w queries, Nk = Nq/4 keys (2x2-pooled, a (h/2, w/2) grid); d, dv; H rounds.
"""

from __future__ import annotations

import torch
from torch import Tensor

from biggan.models.attention import SelfAttention2d

__all__ = ["QUERY_PIXELS", "layer_error"]

# Fixed query pixels as fractions of (row, column): the centre and three off-centre points, the same at every tick.
QUERY_PIXELS = ((0.5, 0.5), (0.25, 0.25), (0.25, 0.75), (0.75, 0.5))
_CHUNK = 1024


def _clusters_of(perm: Tensor, size: int) -> Tensor:
    """perm (H, 1, N) sorted position -> index; returns each token's cluster per round (H, N)."""
    ids = torch.arange(perm.shape[-1], device=perm.device).expand_as(perm) // size
    return torch.empty_like(perm).scatter_(-1, perm, ids)[:, 0]  # (H, N)


def _maps(probs: Tensor, met_rounds: Tensor, res: int, pixel: int) -> Tensor:
    """One query's panels (1 + H, 3, res, res) in [0, 1]: the dense map (grey), then per round the dense map in red
    and the keys of that round's cluster in green (caught attention shows yellow); the query pixel in blue."""
    side = res // 2
    dense = (probs / probs.max()).view(side, side)  # (res/2, res/2)
    panels = [dense.expand(3, side, side)]
    for met in met_rounds:  # (Nk,) of one round
        panels.append(torch.stack([dense, 0.8 * met.view(side, side).to(dense.dtype), torch.zeros_like(dense)]))
    out = torch.stack(panels).repeat_interleave(2, -1).repeat_interleave(2, -2).clone()  # (1 + H, 3, res, res)
    row, col = divmod(pixel, res)
    out[:, :, row, col] = torch.tensor([0.0, 0.0, 1.0], dtype=out.dtype, device=out.device).view(1, 3)
    return out


@torch.no_grad()
def layer_error(layer: SelfAttention2d, x: Tensor, maps: bool = True) -> dict[str, float | Tensor]:
    """The SMYRF layer's error against dense attention on the first image of its input x (B, C, h, w).

    Returns ``{"rel_error", "mass"}`` as floats (a host sync: call it where one is allowed, e.g. the tick) and, with
    ``maps``, ``"maps"`` (len(QUERY_PIXELS), 1 + H, 3, h, w) in [0, 1].
    """
    if layer.spec.kind != "smyrf":
        raise ValueError(f"{layer.where}: layer_error needs a SMYRF layer, this one is dense")
    q, k, v = (t.float() for t in layer.qkv(x[:1]))  # (1, Nq, d), (1, Nk, d), (1, Nk, dv)
    out, (perm_q, perm_k) = layer.attend(q, k, v, return_clusters=True)  # (1, Nq, dv), (H, 1, Nq), (H, 1, Nk)
    cluster_q = _clusters_of(perm_q, layer.spec.q_cluster_size)  # (H, Nq)
    cluster_k = _clusters_of(perm_k, layer.spec.k_cluster_size)  # (H, Nk)
    pixels = [int(r * layer.res) * layer.res + int(c * layer.res) for r, c in QUERY_PIXELS]
    err_sq = ref_sq = mass = 0.0
    panels = []
    for start in range(0, q.shape[1], _CHUNK):
        probs = torch.softmax(q[0, start:start + _CHUNK] @ k[0].T, dim=-1)  # (chunk, Nk), scale 1 as the layer
        exact = probs @ v[0]  # (chunk, dv)
        err_sq += (out[0, start:start + _CHUNK] - exact).square().sum().item()
        ref_sq += exact.square().sum().item()
        met = cluster_q[:, start:start + _CHUNK, None] == cluster_k[:, None, :]  # (H, chunk, Nk)
        mass += (probs * met.any(0)).sum().item()
        for pixel in pixels:
            if maps and start <= pixel < start + probs.shape[0]:
                panels.append(_maps(probs[pixel - start], met[:, pixel - start], layer.res, pixel))
    result: dict[str, float | Tensor] = {"rel_error": (err_sq / max(ref_sq, 1e-30)) ** 0.5, "mass": mass / q.shape[1]}
    if maps:
        result["maps"] = torch.stack(panels)  # (queries, 1 + H, 3, h, w)
    return result
