"""Weight initialisation of BigGAN networks (paper: orthogonal; N(0, 0.02) and Xavier as alternatives).

Applies to the weights of every conv, linear and embedding layer, spectrally normalised or not, including G's shared
class embedding; biases keep PyTorch's defaults and BN starts at identity.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

__all__ = ["init_weights"]

_INITS = {
    "ortho": nn.init.orthogonal_,
    "normal": lambda w: nn.init.normal_(w, 0.0, 0.02),
    "xavier": nn.init.xavier_uniform_,
}


def init_weights(model: nn.Module, scheme: Literal["ortho", "normal", "xavier"]) -> None:
    """Re-initialise every conv/linear/embedding weight of ``model`` in place with ``scheme``."""
    init = _INITS[scheme]
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.Embedding)):
            init(module.weight)
