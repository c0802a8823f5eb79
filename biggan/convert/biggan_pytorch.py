"""Import a BigGAN-PyTorch generator (``G_ema.pth`` / ``G.pth``), optionally with its ``D.pth``, as one of OUR
generator checkpoints: loadable by ``sample.py``, and a fine-tuning start (``train.py --init-from``).

Steps, each refusing with one line (nothing is written) when the file does not fit:
1. load with ``torch.load(weights_only=True)`` only (``state_dict.pth`` pickles modules and is refused);
2. a flat state dict of floating tensors from a known variant of that code (:func:`layout.state_shapes`);
3. G or D (:func:`layout.detect_network`; a D given as G is refused, and vice versa);
4. the architecture from the shapes (resolution from the block count, ch, dim_z, classes, shared_dim, attention),
   cross-checked against any flags given;
5. one recipe per tensor of our network, built from that config; every file key consumed (:mod:`mapping`);
6. all values finite; then, unless ``verify`` is off, our network in eval mode (dense attention) against the
   independent reference forward of the file's own layout (:mod:`reference`) on a few fixed inputs.

What cannot be read from the tensors is taken as the released launch script has it: ``SN_eps`` 1e-6 (``--sn-eps``;
it only matters when ‖u·W‖ < eps) and ``BN_eps`` 1e-5 (equal to the output BN's fixed eps, so one ``bn_eps`` holds).
Our spectral norm runs ``sn_iters`` iterations in eval mode where theirs always runs one from the stored u, so the
import pins ``sn_iters: 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from biggan.checkpoint import FORMAT_VERSION, LoadFixes, read_torch_file
from biggan.config import to_dict
from biggan.convert.layout import SourceArchitecture, detect_network, infer_architecture, state_shapes
from biggan.convert.mapping import Recipe, apply_plan, check_plan, plan_state
from biggan.convert.one_class import collapse_to_one_class, parse_one_class
from biggan.convert.reference import BigGANPyTorchReference
from biggan.errors import CheckpointError, ConfigError
from biggan.models import (
    AttentionConfig,
    ModelConfig,
    NetworkConfig,
    build_discriminator,
    build_generator,
    load_state_strict,
)
from biggan.models.architectures import D_ARCHS, G_ARCHS
from biggan.training.config import Config

__all__ = ["ImportRequest", "ImportResult", "import_biggan_pytorch", "read_source", "model_config_for", "convert_state",
           "network_from_state", "plan_for"]

_FIXES = LoadFixes(
    missing="pass the path of a BigGAN-PyTorch G_ema.pth, G.pth or D.pth",
    unsafe="pass G_ema.pth, G.pth or D.pth (their state_dict.pth pickles the run config with modules in it and "
           "holds no weights)",
    corrupt="download or unzip it again (the released 138k/G_ema.pth is about 280 MB)",
)
RELEASED_SN_EPS = 1e-6  # scripts/launch_BigGAN_bs256x8.sh: --SN_eps 1e-6 --BN_eps 1e-5
RELEASED_BN_EPS = 1e-5
_VERIFY_SAMPLES = 2
_VERIFY_ATOL = 1e-4  # fp32 eval forwards agree to ~1e-6 on [-1, 1] images (tests: float64 to ~1e-14)


@dataclass
class ImportRequest:
    """What ``python -m biggan.convert biggan-pytorch`` was asked; None = read it from the file."""

    generator: Path
    discriminator: Optional[Path] = None
    resolution: Optional[int] = None
    attention_res: Optional[tuple[int, ...]] = None  # G's attention resolutions
    ch: Optional[int] = None
    dim_z: Optional[int] = None
    n_classes: Optional[int] = None
    sn_eps: float = RELEASED_SN_EPS
    class_names: Optional[list[str]] = None
    one_class: Optional[str] = None  # "mean" or a class index: collapse to one class (fine-tuning on unlabelled data)
    verify: bool = True


@dataclass
class ImportResult:
    checkpoint: dict[str, Any]
    lines: list[str] = field(default_factory=list)  # what was imported and checked, for the CLI


def read_source(path: Path, network: str) -> tuple[dict[str, torch.Tensor], SourceArchitecture]:
    """The file's tensors and architecture; CheckpointError if it is not a BigGAN-PyTorch ``network`` file."""
    state = read_torch_file(path, "BigGAN-PyTorch file", _FIXES)
    shapes = state_shapes(state, path)
    found = detect_network(shapes, path)
    if found != network:
        if network == "G":
            raise CheckpointError(f"{path} holds a BigGAN-PyTorch discriminator, not a generator; give the generator "
                                  "(G_ema.pth) first and this file with --D")
        raise CheckpointError(f"--D {path} holds a BigGAN-PyTorch generator, not a discriminator; give it as the "
                              "first argument and D.pth with --D")
    for key, value in state.items():
        if not torch.isfinite(value).all():
            raise CheckpointError(f"{path}: '{key}' holds NaN or infinite values (a diverged run?); import an "
                                  "earlier checkpoint")
    return dict(state), infer_architecture(shapes, network, path)


def _cross_check(arch: SourceArchitecture, request: ImportRequest, path: Path) -> None:
    """Flags the user gave must agree with what the tensors say (the file wins only when nothing was asked)."""
    show = lambda value: " ".join(map(str, value)) if isinstance(value, tuple) else str(value)  # noqa: E731
    asked = {"--resolution": (request.resolution, arch.resolution), "--ch": (request.ch, arch.ch),
             "--dim-z": (request.dim_z, arch.dim_z), "--n-classes": (request.n_classes, arch.n_classes),
             "--attention-res": (request.attention_res and tuple(sorted(request.attention_res)),
                                 tuple(sorted(arch.attention)))}
    for flag, (given, found) in asked.items():
        if given is not None and given != found:
            raise CheckpointError(f"{path} holds a {arch.describe()}, not {flag} {show(given)}; pass {flag} "
                                  f"{show(found)} (or leave it out), or the file you meant")


def model_config_for(g: SourceArchitecture, d: Optional[SourceArchitecture], sn_eps: float) -> ModelConfig:
    """Our config for the file(s): class-conditional with dense attention where theirs has it, sn_iters 1."""
    if d is None:  # no D file: D as the same code's launch script builds it (same ch, attention where D has it)
        d_attention = [r for r in g.attention if r in D_ARCHS[g.resolution].out_resolutions()]
        d_ch = g.ch
    else:
        d_attention, d_ch = list(d.attention), d.ch
    return ModelConfig(
        resolution=g.resolution, dim_z=g.dim_z, conditioning="class", n_classes=g.n_classes, shared_dim=g.shared_dim,
        G=NetworkConfig(ch=g.ch, attention=[AttentionConfig(res=r, kind="dense") for r in g.attention]),
        D=NetworkConfig(ch=d_ch, attention=[AttentionConfig(res=r, kind="dense") for r in d_attention]),
        sn_iters=1, sn_eps=sn_eps, bn_eps=RELEASED_BN_EPS,
    )


def network_from_state(build: Callable[[ModelConfig], nn.Module], cfg: ModelConfig,
                       state: dict[str, torch.Tensor], what: str) -> nn.Module:
    """``build(cfg)`` on the meta device (no init cost at ch 96), then filled strictly from ``state`` on the CPU."""
    with torch.device("meta"):
        net = build(cfg)
    net = net.to_empty(device="cpu")
    load_state_strict(net, state, what)
    return net.eval()


def plan_for(net_shapes: dict[str, tuple[int, ...]], network: str, cfg: ModelConfig) -> dict[str, Recipe]:
    """The recipes of one of our networks of config ``cfg`` (attention layers after the first block with their res)."""
    archs = G_ARCHS if network == "G" else D_ARCHS
    out_res = archs[cfg.resolution].out_resolutions()
    return plan_state(net_shapes, network, {str(s.res): out_res.index(s.res) for s in getattr(cfg, network).attention})


def convert_state(network: str, cfg: ModelConfig, theirs: dict[str, torch.Tensor], path: Path, expect: str,
                  dtype: torch.dtype = torch.float32) -> tuple[dict[str, torch.Tensor], dict[str, Recipe]]:
    """Our state dict of ``network`` (config ``cfg``) from the file's tensors, and the recipes that made it.

    Args:
        expect: the architecture the file was read as, for error messages.
        dtype: of the result (float64 in the exactness tests; the checkpoint is float32).
    """
    build = build_generator if network == "G" else build_discriminator
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in build(cfg).state_dict().items()}
    plan = plan_for(shapes, network, cfg)
    check_plan(plan, {k: tuple(v.shape) for k, v in theirs.items()}, shapes, path, expect)
    return apply_plan(plan, theirs, dtype), plan


def _convert(network: str, cfg: ModelConfig, theirs: dict[str, torch.Tensor], arch: SourceArchitecture,
             path: Path) -> tuple[nn.Module, dict[str, torch.Tensor], str]:
    """Our network filled from ``theirs``; also its state dict and a one-line account of the mapping."""
    state, plan = convert_state(network, cfg, theirs, path, f"a {arch.describe()}")
    build = build_generator if network == "G" else build_discriminator
    net = network_from_state(build, cfg, state, f"{network} imported from {path}")
    folds = sum(r.kind == "fold" for r in plan.values())
    added = sum(r.kind == "zero" for r in plan.values())
    account = (f"{len(theirs)} tensors -> {len(state)}" + (f" ({folds} conv1 biases folded into bn2 running means, "
               f"{added} BN counters added)" if network == "G" else "") + f", {next(iter(theirs.values())).dtype}")
    return net, state, account


def _verify(G: nn.Module, D: Optional[nn.Module], theirs_g: dict[str, torch.Tensor],
            theirs_d: Optional[dict[str, torch.Tensor]], cfg: ModelConfig) -> list[str]:
    """Our eval forward against the reference forward of the source layout; CheckpointError if they disagree."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(_VERIFY_SAMPLES, cfg.dim_z, generator=gen)  # (B, dim_z)
    y = torch.linspace(0, cfg.n_classes - 1, _VERIFY_SAMPLES).round().long()  # (B,): first and last class
    lines = []
    with torch.no_grad():
        x = G(z, y)  # (B, 3, res, res)
        ref = BigGANPyTorchReference({k: v.float() for k, v in theirs_g.items()}, cfg.sn_eps, cfg.bn_eps)
        diff = (x - ref.generator(z, y)).abs().max().item()
        lines.append(f"  checked: our G (eval, dense) vs the reference forward of the file's layout, "
                     f"{_VERIFY_SAMPLES} samples: max |diff| {diff:.2e} on outputs in [-1, 1]")
        bad = diff > _VERIFY_ATOL
        if D is not None and theirs_d is not None:
            ref_d = BigGANPyTorchReference({k: v.float() for k, v in theirs_d.items()}, cfg.sn_eps, cfg.bn_eps)
            expected = ref_d.discriminator(x, y)  # (B,)
            d_diff = (D(x, y) - expected).abs().max().item()
            scale = max(1.0, expected.abs().max().item())
            lines.append(f"  checked: our D vs the reference on G's samples: max |diff| {d_diff:.2e} (logits up to "
                         f"{scale:.2g})")
            bad = bad or d_diff > _VERIFY_ATOL * scale
    if bad:
        raise CheckpointError("the imported network does not reproduce the reference forward of the file's layout ("
                              + "; ".join(line.strip() for line in lines) + "); this file differs from the documented "
                              "layout: please report it")
    return lines


def _class_names(request: ImportRequest, n_classes: int) -> Optional[list[str]]:
    names = request.class_names
    if names is not None and len(names) != n_classes:
        raise ConfigError(f"--class-names lists {len(names)} names but the model has {n_classes} classes; give one "
                          "name per line, in class-index order")
    return names


def import_biggan_pytorch(request: ImportRequest) -> ImportResult:
    """Everything checked first; the returned checkpoint is written by the caller (nothing is written here)."""
    theirs_g, arch_g = read_source(request.generator, "G")
    _cross_check(arch_g, request, request.generator)
    theirs_d, arch_d = None, None
    if request.discriminator is not None:
        theirs_d, arch_d = read_source(request.discriminator, "D")
        if (arch_d.resolution, arch_d.n_classes) != (arch_g.resolution, arch_g.n_classes):
            raise CheckpointError(f"--D {request.discriminator} is a {arch_d.describe()} but the generator is a "
                                  f"{arch_g.describe()}; pass the D.pth of the same run")
    cfg = model_config_for(arch_g, arch_d, request.sn_eps)
    names = _class_names(request, cfg.n_classes)
    G, state_g, account_g = _convert("G", cfg, theirs_g, arch_g, request.generator)
    lines = [f"{request.generator}: BigGAN-PyTorch {arch_g.describe()}", f"  {account_g}"]
    D, state_d = None, None
    if theirs_d is not None:
        D, state_d, account_d = _convert("D", cfg, theirs_d, arch_d, request.discriminator)
        lines += [f"{request.discriminator}: BigGAN-PyTorch {arch_d.describe()}", f"  {account_d}"]
    if request.verify:
        lines += _verify(G, D, theirs_g, theirs_d, cfg)
    if request.one_class is not None:
        index = parse_one_class(request.one_class, cfg.n_classes)
        cfg, state_g, state_d = collapse_to_one_class(cfg, state_g, state_d, index)
        label = f"mean of {arch_g.n_classes} classes" if index is None else (names[index] if names else f"class {index}")
        lines.append(f"  one class for fine-tuning on unlabelled data: the {label} (shared embedding"
                     + (" and D's projection" if state_d is not None else "") + " reduced to one row)")
        names = [label]
    checkpoint = {
        "format_version": FORMAT_VERSION,
        "config": to_dict(Config(name="imported", model=cfg)),
        "model_args": to_dict(cfg),
        "step": 0,
        "G": state_g,
        "G_ema": state_g,  # one file: the weights are both (G_ema.pth of the release is the EMA generator)
        **({"D": state_d} if state_d is not None else {}),
        "class_names": names,
        "source": {"format": "biggan-pytorch", "G": str(request.generator),
                   "D": None if request.discriminator is None else str(request.discriminator),
                   "architecture": arch_g.describe()},
    }
    return ImportResult(checkpoint, lines)
