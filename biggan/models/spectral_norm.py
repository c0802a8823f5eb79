"""Spectral normalisation with one power iteration per training forward (Miyato et al. 2018, as in BigGAN).

Why our own instead of ``torch.nn.utils.parametrizations.spectral_norm``: BigGAN keeps the estimated top singular value
as a buffer for logging, updates the power-iteration vector only in training mode, and we must run the iteration in
fp32 even under bf16/fp16 autocast (a bf16 power iteration drifts and makes sigma noisy). The parameter is still called
``weight``, so state_dicts stay plain: ``weight``, ``bias``, and the buffers ``u`` (left singular vector estimate) and
``sv`` (last estimated sigma).

No ``.item()`` and no branch on tensor values: the forward traces into one XLA graph.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SpectralNorm", "SNConv2d", "SNLinear", "SNEmbedding", "fp32_region"]

LinearOp = Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]  # (weight, bias or None) -> output


def fp32_region(device: torch.device) -> contextlib.AbstractContextManager:
    """Disable autocast on ``device`` so that matmuls inside stay in the dtype of their inputs (fp32 here)."""
    if torch.amp.autocast_mode.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class SpectralNorm:
    """Mixin for a module with a ``weight`` of shape (out, ...): ``normalized_weight()`` returns weight / sigma.

    Args of :meth:`init_spectral_norm`:
        num_iters: power iterations per training forward (BigGAN: 1; u carries over between steps).
        eps: added to vector norms in the power iteration (BigGAN launch scripts: 1e-6).
    """

    weight: nn.Parameter
    u: torch.Tensor
    sv: torch.Tensor

    def init_spectral_norm(self, num_iters: int, eps: float) -> None:
        self.sn_iters = num_iters
        self.sn_eps = eps
        num_rows = self.weight.shape[0]
        # u starts random (global RNG, so the builder's seed decides it); it converges during training.
        self.register_buffer("u", F.normalize(torch.randn(1, num_rows), dim=1, eps=eps))  # (1, out)
        self.register_buffer("sv", torch.ones(()))

    def sigma(self) -> torch.Tensor:
        """sigma_max(weight), an fp32 scalar from power iteration; the gradient flows through it (not through u, v)."""
        weight = self.weight
        with fp32_region(weight.device):
            w = weight.float().reshape(weight.shape[0], -1)  # (out, in·kh·kw)
            with torch.no_grad():
                u = self.u.float()
                for _ in range(self.sn_iters):
                    v = F.normalize(u @ w, dim=1, eps=self.sn_eps)  # (1, in·kh·kw)
                    u = F.normalize(v @ w.t(), dim=1, eps=self.sn_eps)  # (1, out)
            sigma = ((v @ w.t()) @ u.t()).reshape(())
        if self.training:
            # Only training steps advance the estimate, so eval forwards are pure functions of the state_dict.
            with torch.no_grad():
                self.u.copy_(u)
                self.sv.copy_(sigma.detach())
        return sigma

    def normalized_weight(self) -> torch.Tensor:
        """weight / sigma_max(weight), with the gradient through sigma (one power iteration in training mode)."""
        return (self.weight.float() / self.sigma()).to(self.weight.dtype)

    def sn_apply(
        self, linear_op: LinearOp, out_numel: int, bias: Optional[torch.Tensor] = None, bias_shape: tuple = (-1,)
    ) -> torch.Tensor:
        """``linear_op(weight / sigma, bias)``, computed as ``linear_op(weight, None) / sigma + bias`` when the output
        (``out_numel`` elements) is smaller than the weight.

        ``linear_op`` (convolution, matmul, lookup) is linear in the weight, so both orders give the same
        result up to rounding. They differ in what autograd keeps until backward: scaling the weight keeps a normalised
        copy of it (the op needs its weight to pass gradients to its input), scaling the output keeps the unscaled
        output (for the gradient of sigma). The low-resolution layers of BigGAN have kernels far larger than their
        outputs (G-128's 1536-channel 3x3 convolutions: 21M weights against 0.2M outputs per image), so keeping the
        smaller of the two saves most of one copy of both networks' weights per training step. When the weight needs
        no gradient (D inside G's step), scaling the output keeps nothing at all.
        """
        sigma = self.sigma()
        if out_numel < self.weight.numel() or not (self.weight.requires_grad and torch.is_grad_enabled()):
            out = linear_op(self.weight, None) / sigma  # a 0-dim fp32 sigma keeps a bf16 output bf16
            return out if bias is None else out + bias.to(out.dtype).view(bias_shape)  # as autocast casts a bias
        return linear_op((self.weight.float() / sigma).to(self.weight.dtype), bias)


class SNConv2d(nn.Conv2d, SpectralNorm):
    """Conv2d with a spectrally normalised kernel."""

    def __init__(self, *args, sn_iters: int = 1, sn_eps: float = 1e-6, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.init_spectral_norm(sn_iters, sn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = lambda weight, bias: self._conv_forward(x, weight, bias)  # noqa: E731
        return self.sn_apply(conv, self._out_numel(x), self.bias, (-1, 1, 1))  # bias (out,) as (out, 1, 1)

    def _out_numel(self, x: torch.Tensor) -> int:
        """Elements of the output for input (B, in, h, w), from the static shapes (XLA traces no extra op)."""
        if isinstance(self.padding, str):  # "same" keeps h and w ("valid" makes them smaller: an upper bound)
            spatial = x.shape[-2:]
        else:
            spatial = [
                (size + 2 * pad - dil * (k - 1) - 1) // stride + 1
                for size, pad, dil, k, stride in zip(x.shape[-2:], self.padding, self.dilation, self.kernel_size,
                                                      self.stride)
            ]
        return x.shape[0] * self.out_channels * spatial[0] * spatial[1]


class SNLinear(nn.Linear, SpectralNorm):
    """Linear layer with a spectrally normalised weight."""

    def __init__(self, *args, sn_iters: int = 1, sn_eps: float = 1e-6, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.init_spectral_norm(sn_iters, sn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        linear = lambda weight, bias: F.linear(x, weight, bias)  # noqa: E731
        return self.sn_apply(linear, x.numel() // self.in_features * self.out_features, self.bias)


class SNEmbedding(nn.Embedding, SpectralNorm):
    """Embedding whose (num_embeddings, dim) table is spectrally normalised (D's projection embedding)."""

    def __init__(self, *args, sn_iters: int = 1, sn_eps: float = 1e-6, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.init_spectral_norm(sn_iters, sn_eps)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.sn_apply(lambda weight, _: F.embedding(y, weight), y.numel() * self.embedding_dim)
