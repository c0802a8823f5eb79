"""Raw image folders: listing, decoding and resizing shared by the prepare command, the FID CLI and FolderDataset.

``FolderDataset`` reads a folder of images directly (decode + resize per access). It is the slow path: prefer
``python -m data.prepare_celebahq`` once, then ``kind: prepared``, which never decodes a JPEG during training.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from biggan.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "RESAMPLE_FILTERS",
    "natural_key",
    "list_image_files",
    "decode_rgb",
    "resize_square",
    "to_chw",
    "FolderDataset",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
# Antialiasing PIL filters only: BOX = ProGAN's repeated 2×2 averaging, LANCZOS = stylegan2-ada's default.
RESAMPLE_FILTERS = {"box": Image.Resampling.BOX, "lanczos": Image.Resampling.LANCZOS}


def natural_key(name: str) -> list[int | str]:
    """Sort key with numbers compared as numbers, so ``2.jpg`` comes before ``10.jpg`` (CelebAMask-HQ naming)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_image_files(root: Path) -> list[Path]:
    """Every image under ``root`` (recursive, hidden files skipped), in natural order; DataError if none."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; check data.path or the SRC argument")
    files = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {root}; "
                        "point the path at the folder that holds them")
    return sorted(files, key=lambda p: natural_key(p.relative_to(root).as_posix()))


def decode_rgb(source: Path | BinaryIO, name: str) -> Image.Image:
    """Fully decode an image as RGB (grayscale, RGBA, CMYK, palette…); DataError naming ``name`` if it fails."""
    try:
        with Image.open(source) as img:
            img.load()  # decode now: a truncated JPEG fails here, not later
            return img.convert("RGB")
    except Exception as err:  # PIL raises several unrelated types for broken files
        raise DataError(f"cannot decode image {name} ({type(err).__name__}: {err}); "
                        "remove or replace it, or pass --skip-bad") from err


def resize_square(img: Image.Image, resolution: int, name: str, resample: str = "box") -> Image.Image:
    """Antialiased downscale of a square image to ``resolution``; DataError if not square or too small."""
    w, h = img.size
    if w != h:
        raise DataError(f"image {name} is {w}x{h}, not square; crop it to a square or pass --skip-bad")
    if w < resolution:
        raise DataError(f"image {name} is {w}x{h}, smaller than the {resolution}px target; "
                        "use a larger source or a lower resolution")
    return img if w == resolution else img.resize((resolution, resolution), RESAMPLE_FILTERS[resample])


def to_chw(img: Image.Image) -> np.ndarray:
    """RGB PIL image -> uint8 ``(3, h, w)``."""
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))  # (h, w, 3) -> (3, h, w)


class FolderDataset:
    """Images of a folder (recursive), decoded, checked square and BOX-resized on every access (slow path)."""

    def __init__(self, root: str | Path, resolution: int) -> None:
        self.root = Path(root)
        self.resolution = resolution
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
