"""The tick's attention probe: each SMYRF layer of G and D against dense attention on one sample, in TensorBoard.

Every tick (``log.attention_probe``), on the main process: G (the trained network, in eval mode) generates one image
from a fixed probe z and D scores it; forward pre-hooks on the SMYRF layers capture their inputs during those two
forwards, and ``biggan.models.attention_error.layer_error`` compares each layer's SMYRF output with dense attention on
them (the dense side in query chunks, so it fits at 256²). Logged: ``attention_error/<net>.<layer>`` (relative error
of the attention output), ``attention_mass/<net>.<layer>`` (mean share of a query's dense attention mass on the keys
its clusters met) and ``attention_maps/<net>.<layer>`` (per fixed query pixel: the dense map, then per round the keys
its cluster got, see ``attention_error._maps``).

Why a hook in the tick rather than in the hot step: the hot step carries nothing (no activation kept alive, no host
sync, an unchanged XLA graph), and eval mode changes no state (no BN running-statistics update, no spectral-norm
power iteration, the layers' fixed eval projection seeds instead of their training generators, a probe z from its own
generator), so runs and resumes stay bit-identical with the probe on or off. The same z every tick makes the curve a
comparison over training time. Cost, measured by ``benchmarks/attention_probe.py`` (README).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from typing import Optional

import torch
from torch import Tensor, nn

from biggan.images import image_grid
from biggan.models import SelfAttention2d
from biggan.models.attention_error import layer_error

__all__ = ["AttentionProbe"]

_PROBE_SEED = 2**31 - 2  # the probe's z comes from its own generator: same z every tick, training RNG untouched


class AttentionProbe:
    """SMYRF-vs-dense numbers and maps for every SMYRF layer of G and D (unwrapped networks)."""

    def __init__(self, G: nn.Module, D: nn.Module, dim_z: int, device: torch.device,
                 label: Optional[int] = None) -> None:
        self.nets = {"G": G, "D": D}
        self.z = torch.randn(1, dim_z, generator=torch.Generator().manual_seed(_PROBE_SEED)).to(device)  # (1, dim_z)
        # A class-conditional pair needs a label: the probe's fixed one (class 0 unless given).
        self.y = None if label is None else torch.full((1,), label, dtype=torch.long, device=device)  # (1,)
        self.layers = {f"{net}.{name}": m for net, model in self.nets.items() for name, m in model.named_modules()
                       if isinstance(m, SelfAttention2d) and m.spec.kind == "smyrf"}

    def __bool__(self) -> bool:
        return bool(self.layers)

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        modes = {net: model.training for net, model in self.nets.items()}
        try:
            for model in self.nets.values():
                model.eval()
            yield
        finally:
            for net, model in self.nets.items():
                model.train(modes[net])

    def _inputs(self) -> dict[str, Tensor]:
        """Each SMYRF layer's input during G(z) and D(G(z)) (call in eval mode)."""
        seen: dict[str, Tensor] = {}
        hooks = [m.register_forward_pre_hook(lambda _, args, name=name: seen.setdefault(name, args[0]))
                 for name, m in self.layers.items()]
        try:
            self.nets["D"](self.nets["G"](self.z, self.y), self.y)
        finally:
            for hook in hooks:
                hook.remove()
        return seen

    @torch.no_grad()
    def run(self) -> tuple[dict[str, float], dict[str, Tensor]]:
        """Scalars {'attention_error/<layer>', 'attention_mass/<layer>'} and map grids {'attention_maps/<layer>'}."""
        scalars, images = {}, {}
        with self._eval_mode():  # also for layer_error: q, k, v through eval-mode SN, SMYRF with the eval seeds
            for name, x in self._inputs().items():
                result = layer_error(self.layers[name], x)
                scalars[f"attention_error/{name}"] = result["rel_error"]
                scalars[f"attention_mass/{name}"] = result["mass"]
                panels = result["maps"]  # (queries, 1 + H, 3, h, w) in [0, 1]
                images[f"attention_maps/{name}"] = image_grid(panels.flatten(0, 1) * 2 - 1, nrow=panels.shape[1])
        return scalars, images
