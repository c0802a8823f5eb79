"""Raw image folders: square antialiased resizing (shared with the prepare command) and ``FolderDataset``.

``FolderDataset`` reads a folder of images directly (decode + resize per access). It is the slow path: prefer
``python -m data.prepare_celebahq`` once, then ``kind: prepared``, which never decodes a JPEG during training.
Labelled (for ``conditioning: class``), it reads the folder by torchvision's ImageFolder rules (:mod:`labels`).

With ``workers`` > 0 a batch is decoded in that many worker processes (``spawn``: the loading thread runs beside the
training step, and forking a process that has threads can deadlock). ``Executor.map`` returns the images in the order of
the indices, so the batch is the same as a serial decode; a bad file raises its DataError in the caller. A prepared
(memmap) dataset needs no workers: its batch is one gather.
"""

from __future__ import annotations

import multiprocessing
import weakref
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from biggan.data.labels import ClassLabels, discover_classes
from biggan.errors import DataError
from biggan.images import decode_rgb, list_image_files, to_chw

__all__ = ["RESAMPLE_FILTERS", "resize_square", "FolderDataset"]

# Antialiasing PIL filters only: BOX = ProGAN's repeated 2×2 averaging, LANCZOS = stylegan2-ada's default.
RESAMPLE_FILTERS = {"box": Image.Resampling.BOX, "lanczos": Image.Resampling.LANCZOS}


def resize_square(img: Image.Image, resolution: int, name: str, resample: str = "box") -> Image.Image:
    """Antialiased downscale of a square image to ``resolution``; DataError if not square or too small."""
    w, h = img.size
    if w != h:
        raise DataError(f"image {name} is {w}x{h}, not square; crop it to a square or pass --skip-bad")
    if w < resolution:
        raise DataError(f"image {name} is {w}x{h}, smaller than the {resolution}px target; "
                        "use a larger source or a lower resolution")
    return img if w == resolution else img.resize((resolution, resolution), RESAMPLE_FILTERS[resample])


def decode_square(path: Path, resolution: int) -> np.ndarray:
    """uint8 ``(3, res, res)`` of one image file: decoded, checked square, BOX-resized (what a worker process runs)."""
    name = str(path)
    return to_chw(resize_square(decode_rgb(path, name), resolution, name))


def _decode_item(item: tuple[Path, int]) -> np.ndarray:
    return decode_square(*item)


class FolderDataset:
    """Images of a folder (recursive), decoded, checked square and BOX-resized on every access (slow path).

    Args:
        labelled: one sub-folder per class (ImageFolder rules and order, ``class_labels`` set); otherwise every image
            under the root in natural order and ``class_labels`` None.
        workers: processes that decode a batch (started on the first batch, stopped by :meth:`close` or when the
            dataset is collected); 0 decodes in the calling thread.
    """

    def __init__(self, root: str | Path, resolution: int, labelled: bool = False, workers: int = 0) -> None:
        self.root = Path(root)
        self.resolution = resolution
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self.class_labels: ClassLabels | None = None
        if labelled:
            classes, samples = discover_classes(self.root)
            self.files = [path for path, _ in samples]
            self.class_labels = ClassLabels(np.array([label for _, label in samples], dtype=np.int64), classes)
        else:
            self.files = list_image_files(self.root)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(decode_square(self.files[index], self.resolution))  # (3, res, res) uint8

    def get_batch(self, indices: np.ndarray) -> torch.Tensor:
        """uint8 ``(B, 3, res, res)`` for the given indices, in their order (decoded by the workers, if any)."""
        items = [(self.files[int(i)], self.resolution) for i in indices]
        if self.workers == 0 or len(items) < 2:
            return torch.stack([torch.from_numpy(_decode_item(item)) for item in items])
        chunk = max(1, len(items) // (2 * self.workers))  # two chunks per worker: fewer round trips, balanced load
        decoded = list(self._executor().map(_decode_item, items, chunksize=chunk))  # (3, res, res) each, in order
        return torch.from_numpy(np.stack(decoded))  # (B, 3, res, res)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
            weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)
        return self._pool

    def close(self) -> None:
        """Stop the decode processes (a later batch starts them again)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def reference_stats_path(self, dims: int) -> Path | None:
        """A raw folder is the user's: reference statistics are not written into it (set fid.ref_stats)."""
        return None
