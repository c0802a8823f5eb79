"""GAN losses as pure functions of discriminator logits.

The real and fake halves of the D loss are returned separately so the tick can log them (the SMYRF run never logged
losses at all). All returns are 0-d tensors; nothing here reads a value back to the host.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch.nn.functional as F
from torch import Tensor

__all__ = ["DLoss", "hinge_d", "hinge_g", "ns_d", "ns_g", "LOSSES"]


class DLoss(NamedTuple):
    """D loss split into its real and fake terms; ``total = real + fake`` is what is minimised."""

    real: Tensor
    fake: Tensor

    @property
    def total(self) -> Tensor:
        return self.real + self.fake


def hinge_d(d_real: Tensor, d_fake: Tensor) -> DLoss:
    """BigGAN hinge loss for D: mean(relu(1 - D(x))) + mean(relu(1 + D(G(z))))."""
    return DLoss(F.relu(1.0 - d_real).mean(), F.relu(1.0 + d_fake).mean())


def hinge_g(d_fake: Tensor) -> Tensor:
    """Hinge loss for G: -mean(D(G(z))) (no margin: G keeps pushing fakes up)."""
    return -d_fake.mean()


def ns_d(d_real: Tensor, d_fake: Tensor) -> DLoss:
    """Non-saturating logistic loss for D: softplus(-D(x)) + softplus(D(G(z)))."""
    return DLoss(F.softplus(-d_real).mean(), F.softplus(d_fake).mean())


def ns_g(d_fake: Tensor) -> Tensor:
    """Non-saturating G loss: softplus(-D(G(z))), i.e. -log sigmoid(D(G(z)))."""
    return F.softplus(-d_fake).mean()


LOSSES: dict[str, tuple[Callable[[Tensor, Tensor], DLoss], Callable[[Tensor], Tensor]]] = {
    "hinge": (hinge_d, hinge_g),
    "ns": (ns_d, ns_g),
}
