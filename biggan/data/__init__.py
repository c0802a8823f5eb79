"""Training data: the prepared uint8 memmap format, raw folders, the demo dataset and the batch stream.

Datasets yield uint8 ``(3, res, res)`` images and uint8 ``(B, 3, res, res)`` batches via ``get_batch``;
:class:`BatchStream` turns them into float ``(B, 3, res, res)`` in [-1, 1] (B batch, res resolution).
"""

from __future__ import annotations

from biggan.data.config import DataConfig
from biggan.data.folder import FolderDataset
from biggan.data.prepared import PreparedDataset
from biggan.data.stream import BatchStream, ImageSource
from biggan.data.synthetic import ensure_synthetic_dataset

__all__ = [
    "DataConfig",
    "BatchStream",
    "ImageSource",
    "FolderDataset",
    "PreparedDataset",
    "build_dataset",
    "ensure_synthetic_dataset",
]


def build_dataset(cfg: DataConfig, resolution: int) -> PreparedDataset | FolderDataset:
    """The dataset ``cfg`` describes at the model's ``resolution`` (the demo dataset is generated on first use)."""
    if cfg.kind == "synthetic":
        root = ensure_synthetic_dataset(cfg.path, resolution, cfg.synthetic_num_images, cfg.synthetic_seed)
        return PreparedDataset(root, resolution)
    if cfg.kind == "prepared":
        return PreparedDataset(cfg.path, resolution)
    return FolderDataset(cfg.path, resolution)
