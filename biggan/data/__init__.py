"""Training data: the prepared uint8 memmap format, raw folders, the demo dataset and the batch stream.

Datasets yield uint8 ``(3, res, res)`` images and uint8 ``(B, 3, res, res)`` batches via ``get_batch``, and carry
``class_labels`` (:class:`ClassLabels`, or None when unlabelled); :class:`BatchStream` turns them into a deterministic,
resumable stream of :class:`HostBatch` (uint8 images, bool ``(B,)`` flips, int64 ``(B,)`` labels when given them), and
:func:`model_input` makes the float ``(B, 3, res, res)`` in [-1, 1] from them on the device (B batch, res resolution).
"""

from __future__ import annotations

from biggan.data.config import DataConfig
from biggan.data.folder import FolderDataset
from biggan.data.labels import ClassLabels, discover_classes, labels_for_run, no_labels_error
from biggan.data.model_input import model_input
from biggan.data.prepared import PreparedDataset
from biggan.data.stream import BatchStream, HostBatch, ImageSource
from biggan.data.synthetic import ensure_synthetic_dataset

__all__ = [
    "DataConfig",
    "BatchStream",
    "HostBatch",
    "ImageSource",
    "model_input",
    "FolderDataset",
    "PreparedDataset",
    "build_dataset",
    "ensure_synthetic_dataset",
    "ClassLabels",
    "discover_classes",
    "labels_for_run",
]


def build_dataset(cfg: DataConfig, resolution: int, n_classes: int | None = None) -> PreparedDataset | FolderDataset:
    """The dataset ``cfg`` describes at the model's ``resolution`` (the demo dataset is generated on first use).

    ``n_classes`` > 1 (a class-conditional run): a raw folder is read as class sub-folders (a prepared directory
    carries its labels, if any, either way), and the demo dataset, which has none, is refused before it is made.
    """
    labelled = n_classes is not None and n_classes > 1
    if cfg.kind == "synthetic":
        if labelled:
            raise no_labels_error("the demo dataset (data.kind synthetic)", n_classes)
        root = ensure_synthetic_dataset(cfg.path, resolution, cfg.synthetic_num_images, cfg.synthetic_seed)
        return PreparedDataset(root, resolution)
    if cfg.kind == "prepared":
        return PreparedDataset(cfg.path, resolution)
    return FolderDataset(cfg.path, resolution, labelled=labelled, workers=cfg.workers)
