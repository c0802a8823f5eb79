"""The FID feature extractor: pytorch-fid's ``InceptionV3`` with local TF-Inception (2015-12-05) weights.

Input is uint8 ``(B, 3, h, w)`` images, as if read back from PNG, so real and fake images go through exactly the same
path as ``python -m pytorch_fid``: ``/255`` (its ``ToTensor``), bilinear resize to 299 (``align_corners=False``),
scale to [-1, 1], then the network. Output is ``(B, dims)`` float64 on ``feature_device`` (the run's metric device: the
GPU itself on cuda, so features never cross to the host; the host under XLA, whose devices lack fast float64);
depths below 2048 are spatially averaged as pytorch-fid does. The module is pinned to eval mode: FIDs from a
train-mode extractor are meaningless (pytorch-fid #118).
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn

from biggan.errors import WeightsError
from biggan.fid.config import ALLOWED_DIMS
from biggan.fid.dependency import pytorch_fid_module
from biggan.fid.weights import INSTALL_HINT, file_sha256, load_weights

__all__ = ["FIDExtractor", "load_extractor", "build_inception", "extractor_identity"]


def extractor_identity(weights_file: Path, dims: int) -> str:
    """Names what produced a set of features: network, weights file content, depth and resize to 299."""
    return f"pytorch-fid-InceptionV3/{weights_file.name}/sha256:{file_sha256(weights_file)[:16]}/d{dims}/bilinear299"


def build_inception(state_dict: dict[str, torch.Tensor], dims: int, resize_input: bool = True,
                    normalize_input: bool = True) -> nn.Module:
    """pytorch-fid's InceptionV3 up to the block that yields ``dims``, loaded (strictly) from ``state_dict``.

    pytorch-fid has no weights argument: it calls ``load_state_dict_from_url``. Replacing that one call with our
    in-memory state dict is what guarantees no network access, whatever is or is not in the hub cache.
    ConfigError (how to install it) when pytorch-fid is missing.
    """
    pfi = pytorch_fid_module("inception")
    block = pfi.InceptionV3.BLOCK_INDEX_BY_DIM[dims]
    with mock.patch.object(pfi, "load_state_dict_from_url", lambda *args, **kwargs: state_dict):
        return pfi.InceptionV3([block], resize_input=resize_input, normalize_input=normalize_input)


class FIDExtractor(nn.Module):
    """uint8 images -> float64 Inception features; always in eval mode, never builds a graph."""

    def __init__(self, inception: nn.Module, dims: int, identity: str,
                 feature_device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.inception = inception.eval()
        self.dims = dims
        self.identity = identity  # extractor file hash, depth and resize: stored with every FID and reference stats
        self.feature_device = torch.device(feature_device)  # where features (and the statistics built from them) live

    def train(self, mode: bool = True) -> FIDExtractor:
        """Ignore requests for train mode: BN batch statistics would change every feature."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features of uint8 ``(B, 3, h, w)`` images (on the extractor's device) as float64 ``(B, dims)`` on
        ``feature_device``."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"FID extractor expects uint8 (B, 3, h, w) images, "
                             f"got {images.dtype} {tuple(images.shape)}")
        x = images.float() / 255.0  # what pytorch-fid's ToTensor does to a PNG
        feats = self.inception(x)[0]  # (B, dims, h', w')
        if feats.shape[2] != 1 or feats.shape[3] != 1:
            feats = F.adaptive_avg_pool2d(feats, output_size=(1, 1))
        # Move, then widen: under XLA the fp32 features cross to the host and become float64 there (TPUs lack f64).
        return feats.flatten(1).to(self.feature_device).to(torch.float64)  # (B, dims)


def load_extractor(weights_path: str | Path | None, device: torch.device | str = "cpu",
                   dims: int = 2048, feature_device: torch.device | str = "cpu") -> FIDExtractor:
    """The FID extractor on ``device`` from the local weights file (``weights_path``, else the torch-hub cache file);
    its features leave on ``feature_device`` (``runtime.metric_device`` in a run).

    Raises ConfigError when pytorch-fid is not installed, WeightsError when the file is missing or corrupt; never
    downloads.
    """
    if dims not in ALLOWED_DIMS:
        raise ValueError(f"dims must be one of {ALLOWED_DIMS}, got {dims}")
    pytorch_fid_module("inception")  # the missing package first: installing it comes before installing its weights
    state, path = load_weights(weights_path)
    try:
        inception = build_inception(state, dims)
    except RuntimeError as err:  # shape or key mismatch in load_state_dict
        raise WeightsError(f"FID Inception weights at {path} do not fit pytorch-fid's InceptionV3; "
                           f"delete the file and {INSTALL_HINT}") from err
    return FIDExtractor(inception, dims, extractor_identity(path, dims), feature_device).to(device)
