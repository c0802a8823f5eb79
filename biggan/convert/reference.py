"""The oracle beside the importer: BigGAN-PyTorch's eval-mode G and D forward, written from that code's documented
semantics and reading a state dict in THEIR layout and key names (``blocks.i.0.conv1.u0`` ...), never ours.

It shares no code with :mod:`biggan.models` or the key mapping, so "our imported network equals this" checks the
mapping, the conv1-bias fold and our layers' order of operations against an independent statement of their semantics.
The importer runs it on the user's real file (``--verify``, on by default); the tests run it on random weights.

Their semantics, as used here:
- SN: ``W / sigma`` with one power iteration from the stored u0 (u0 is not updated in eval; sv0 is never read):
  ``v = normalize(u0 W)``, ``u = normalize(v Wᵀ)``, ``sigma = (v Wᵀ) uᵀ``, W reshaped to (out, -1). sigma is computed
  in fp32 here, as our SpectralNorm does; their code computes it in the weight dtype, identical for the fp32 weights
  of released files.
- G: y is the shared embedding of the class; hier z is split into blocks + 1 chunks, chunk 0 feeds the stem, block i
  is conditioned on cat([y, chunk i+1]) (embedding first). GBlock: cBN, ReLU, nearest 2x up, conv1 (WITH its bias),
  cBN, ReLU, conv2; shortcut: up, then conv_sc. cBN = batch_norm(x, stored_mean, stored_var) * (1 + gain(c)) + bias(c).
  Output: BN (eps fixed 1e-5, affine gain/bias), ReLU, SN conv, tanh.
- D: DBlock: [ReLU if not block 0], conv1, ReLU, conv2, [avg-pool 2]; shortcut: block 0 pools then convs, the others
  conv then pool, none in the last block (no conv_sc). Head: ReLU, sum over space, linear + <SN embed(y), h>.
- Attention after block i when ``blocks.i.1.gamma`` exists: theta/phi/g/o 1x1 SN convs without bias, phi and g
  max-pooled 2x2, ``softmax(thetaᵀ phi)`` with no 1/sqrt(d), out ``gamma * o(...) + x``; in their (B, C, N) layout.

Shape legend: B batch; C channels; h×w spatial size; N = h·w.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BigGANPyTorchReference"]

_BLOCK_RE = re.compile(r"blocks\.(\d+)\.0\.conv1\.weight")
OUTPUT_BN_EPS = 1e-5  # their output BN is built without BN_eps, so it keeps the layer default


class BigGANPyTorchReference:
    """Functional eval-mode forward over ``state`` (their keys); weights are read as stored, never modified.

    Args:
        state: a BigGAN-PyTorch G or D state dict (any floating dtype; all maths in that dtype except sigma).
        sn_eps: their ``SN_eps`` (the released launch script: 1e-6). bn_eps: their ``BN_eps`` for the cBNs (1e-5).
    """

    def __init__(self, state: dict[str, Tensor], sn_eps: float = 1e-6, bn_eps: float = 1e-5) -> None:
        self.sd, self.sn_eps, self.bn_eps = state, sn_eps, bn_eps
        self.num_blocks = sum(1 for key in state if _BLOCK_RE.fullmatch(key))

    # -- layers -------------------------------------------------------------------------------------------------------

    def sigma(self, prefix: str) -> Tensor:
        """Their eval-mode sigma of ``prefix.weight`` from ``prefix.u0`` (one power iteration, u0 unchanged)."""
        w = self.sd[f"{prefix}.weight"].float()
        w = w.reshape(w.shape[0], -1)  # (out, in·kh·kw)
        u = self.sd[f"{prefix}.u0"].float()  # (1, out)
        v = F.normalize(u @ w, eps=self.sn_eps)  # (1, in·kh·kw)
        u = F.normalize(v @ w.t(), eps=self.sn_eps)  # (1, out): the fresh u, not the stored one, gives sigma
        return ((v @ w.t()) @ u.t()).squeeze()

    def _weight(self, prefix: str) -> Tensor:
        weight = self.sd[f"{prefix}.weight"]
        return weight / self.sigma(prefix).to(weight.dtype)

    def conv(self, x: Tensor, prefix: str) -> Tensor:
        weight = self._weight(prefix)
        return F.conv2d(x, weight, self.sd.get(f"{prefix}.bias"), padding=weight.shape[-1] // 2)

    def linear(self, x: Tensor, prefix: str) -> Tensor:
        return F.linear(x, self._weight(prefix), self.sd.get(f"{prefix}.bias"))

    def ccbn(self, x: Tensor, c: Tensor, prefix: str, batch_stats: bool) -> Tensor:
        gain = (1 + self.linear(c, f"{prefix}.gain")).reshape(x.shape[0], -1, 1, 1)  # (B, C, 1, 1)
        bias = self.linear(c, f"{prefix}.bias").reshape(x.shape[0], -1, 1, 1)  # (B, C, 1, 1)
        mean, var = (None, None) if batch_stats else (self.sd[f"{prefix}.stored_mean"], self.sd[f"{prefix}.stored_var"])
        return F.batch_norm(x, mean, var, None, None, batch_stats, 0.1, self.bn_eps) * gain + bias

    def attention(self, x: Tensor, prefix: str) -> Tensor:
        b, c, h, w = x.shape
        theta = self.conv(x, f"{prefix}.theta").reshape(b, c // 8, h * w)  # (B, C/8, N)
        phi = F.max_pool2d(self.conv(x, f"{prefix}.phi"), 2).reshape(b, c // 8, h * w // 4)  # (B, C/8, N/4)
        g = F.max_pool2d(self.conv(x, f"{prefix}.g"), 2).reshape(b, c // 2, h * w // 4)  # (B, C/2, N/4)
        beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), dim=-1)  # (B, N, N/4)
        o = self.conv(torch.bmm(g, beta.transpose(1, 2)).reshape(b, c // 2, h, w), f"{prefix}.o")  # (B, C, h, w)
        return self.sd[f"{prefix}.gamma"] * o + x

    def _maybe_attention(self, h: Tensor, index: int) -> Tensor:
        prefix = f"blocks.{index}.1"
        return self.attention(h, prefix) if f"{prefix}.gamma" in self.sd else h

    # -- networks -----------------------------------------------------------------------------------------------------

    def generator(self, z: Tensor, y: Tensor, batch_stats: bool = False) -> Tensor:
        """G(z, shared(y)) -> (B, 3, res, res); ``batch_stats`` normalises every BN with the batch (training-mode BN)
        instead of the stored statistics (sigma is the same in both modes: from the stored u0)."""
        shared = F.embedding(y, self.sd["shared.weight"])  # (B, shared_dim)
        chunks = torch.split(z, z.shape[1] // (self.num_blocks + 1), dim=1)
        conds = [torch.cat([shared, chunk], dim=1) for chunk in chunks[1:]]  # embedding first, then the z chunk
        h = self.linear(chunks[0], "linear").reshape(z.shape[0], -1, 4, 4)  # (B, 16ch, 4, 4), channel-major
        for index in range(self.num_blocks):
            prefix = f"blocks.{index}.0"
            x = h
            h = F.relu(self.ccbn(h, conds[index], f"{prefix}.bn1", batch_stats))
            h = F.interpolate(h, scale_factor=2, mode="nearest")  # (B, C, 2h, 2w)
            h = self.conv(h, f"{prefix}.conv1")  # with its bias: theirs has one
            h = self.conv(F.relu(self.ccbn(h, conds[index], f"{prefix}.bn2", batch_stats)), f"{prefix}.conv2")
            h = h + self.conv(F.interpolate(x, scale_factor=2, mode="nearest"), f"{prefix}.conv_sc")
            h = self._maybe_attention(h, index)
        sd = self.sd
        mean, var = (None, None) if batch_stats else (sd["output_layer.0.stored_mean"], sd["output_layer.0.stored_var"])
        h = F.batch_norm(h, mean, var, sd["output_layer.0.gain"], sd["output_layer.0.bias"], batch_stats, 0.1,
                         OUTPUT_BN_EPS)
        return torch.tanh(self.conv(F.relu(h), "output_layer.2"))

    def discriminator(self, x: Tensor, y: Tensor) -> Tensor:
        """D(x, y) -> (B,) logits (theirs returns (B, 1))."""
        h = x
        for index in range(self.num_blocks):
            prefix, first, down = f"blocks.{index}.0", index == 0, index < self.num_blocks - 1
            inp = h
            h = self.conv(F.relu(self.conv(inp if first else F.relu(inp), f"{prefix}.conv1")), f"{prefix}.conv2")
            h = F.avg_pool2d(h, 2) if down else h
            learnable = f"{prefix}.conv_sc.weight" in self.sd
            steps = [("pool", down), ("conv", learnable)] if first else [("conv", learnable), ("pool", down)]
            shortcut = inp
            for step, active in steps:
                if active:
                    shortcut = F.avg_pool2d(shortcut, 2) if step == "pool" else self.conv(shortcut, f"{prefix}.conv_sc")
            h = self._maybe_attention(h + shortcut, index)
        h = torch.sum(F.relu(h), dim=(2, 3))  # (B, C)
        out = self.linear(h, "linear")  # (B, 1)
        out = out + torch.sum(F.embedding(y, self._weight("embed")) * h, dim=1, keepdim=True)
        return out.squeeze(1)
