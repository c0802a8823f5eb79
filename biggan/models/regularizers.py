"""BigGAN's modified orthogonal regularisation (Brock et al. 2019, eq. 3).

    R(W) = (beta / 2) · ‖W Wᵀ ⊙ (1 − I)‖²_F      W reshaped to (out, in·kh·kw)

summed over every parameter with >= 2 dims (conv kernels, linear and embedding tables) except G's shared class
embedding, whose rows are class codes, not filters. Only the off-diagonal of WWᵀ is penalised: filters are pushed
apart without constraining their norms (SN handles the scale).

It is returned as a loss term (add it to G's loss before backward), not added to ``.grad`` as BigGAN-PyTorch does; the
factor 1/2 makes its gradient exactly the reference's ``2 · beta · (WWᵀ ⊙ (1 − I)) W``. As a loss it works unchanged
with autocast/GradScaler, DDP and XLA. It reads the raw (not spectrally normalised) weights, as the reference does.
"""

from __future__ import annotations

import torch
from torch import nn

from biggan.models.spectral_norm import fp32_region

__all__ = ["orthogonal_regularization"]


def orthogonal_regularization(model: nn.Module, beta: float) -> torch.Tensor:
    """(beta/2)·Σ‖WWᵀ⊙(1−I)‖²_F over ``model`` as an fp32 scalar; skip the call when beta is 0 (it costs the Grams)."""
    skip = {id(p) for p in model.shared.parameters()} if getattr(model, "shared", None) is not None else set()
    total = None
    for param in model.parameters():
        if param.dim() < 2 or id(param) in skip:
            continue
        with fp32_region(param.device):
            w = param.float().reshape(param.shape[0], -1)  # (out, in·kh·kw)
            gram = w @ w.t()  # (out, out)
            off_diagonal = gram - torch.diag(torch.diagonal(gram))  # (out, out)
            term = off_diagonal.pow(2).sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("orthogonal_regularization: the model has no weight with >= 2 dims")
    return 0.5 * beta * total
