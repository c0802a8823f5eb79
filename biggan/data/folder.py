"""Raw image folders: square antialiased resizing (shared with the prepare command) and ``FolderDataset``.

``FolderDataset`` reads a folder of images directly (decode + resize per access). It is the slow path: prefer
``python -m data.prepare_celebahq`` once, then ``kind: prepared``, which never decodes a JPEG during training.
Labelled (for ``conditioning: class``), it reads the folder by torchvision's ImageFolder rules (:mod:`labels`).
"""

from __future__ import annotations

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


class FolderDataset:
    """Images of a folder (recursive), decoded, checked square and BOX-resized on every access (slow path).

    Args:
        labelled: one sub-folder per class (ImageFolder rules and order, ``class_labels`` set); otherwise every image
            under the root in natural order and ``class_labels`` None.
    """

    def __init__(self, root: str | Path, resolution: int, labelled: bool = False) -> None:
        self.root = Path(root)
        self.resolution = resolution
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
        path = self.files[index]
        name = str(path)
        img = resize_square(decode_rgb(path, name), self.resolution, name)
        return torch.from_numpy(to_chw(img))  # (3, res, res) uint8

    def get_batch(self, indices: np.ndarray) -> torch.Tensor:
        """uint8 ``(B, 3, res, res)`` for the given indices, in their order."""
        return torch.stack([self[int(i)] for i in indices])

    def reference_stats_path(self, dims: int) -> Path | None:
        """A raw folder is the user's: reference statistics are not written into it (set fid.ref_stats)."""
        return None
