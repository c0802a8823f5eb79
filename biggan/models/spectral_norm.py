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

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SpectralNorm", "SNConv2d", "SNLinear", "SNEmbedding", "fp32_region"]


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

    def normalized_weight(self) -> torch.Tensor:
        """weight / sigma_max(weight); sigma from power iteration in fp32, gradient flows through sigma."""
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
            normalized = w / sigma
        return normalized.reshape(weight.shape).to(weight.dtype)


class SNConv2d(nn.Conv2d, SpectralNorm):
    """Conv2d with a spectrally normalised kernel."""

    def __init__(self, *args, sn_iters: int = 1, sn_eps: float = 1e-6, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.init_spectral_norm(sn_iters, sn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.normalized_weight(), self.bias)


class SNLinear(nn.Linear, SpectralNorm):
    """Linear layer with a spectrally normalised weight."""

    def __init__(self, *args, sn_iters: int = 1, sn_eps: float = 1e-6, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.init_spectral_norm(sn_iters, sn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.normalized_weight(), self.bias)


class SNEmbedding(nn.Embedding, SpectralNorm):
    """Embedding whose (num_embeddings, dim) table is spectrally normalised (D's projection embedding)."""

    def __init__(self, *args, sn_iters: int = 1, sn_eps: float = 1e-6, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.init_spectral_norm(sn_iters, sn_eps)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return F.embedding(y, self.normalized_weight())
