"""Images as files and as pixels: listing and decoding image files, and writing uint8 images and grids as PNG.

One definition each, used by every part that touches pixels: the training grids, ``sample.py``, FID (whose fakes
must be quantised exactly as a saved PNG would be), the raw-folder dataset and the CelebA-HQ preparation.

Shape legend: B batch; h×w spatial size. Pixels are uint8 ``(3, h, w)`` / ``(B, 3, h, w)``; model images are float
``(B, 3, h, w)`` in [-1, 1].
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, Optional

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from torch import Tensor
from torchvision.utils import make_grid

from biggan.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "natural_key",
    "list_image_files",
    "decode_rgb",
    "to_chw",
    "to_uint8",
    "image_grid",
    "save_grid",
    "save_image_files",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


# ---------------------------------------------------------------------------------------------------------------------
# Image files


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


def to_chw(img: Image.Image) -> np.ndarray:
    """RGB PIL image -> uint8 ``(3, h, w)``."""
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))  # (h, w, 3) -> (3, h, w)


# ---------------------------------------------------------------------------------------------------------------------
# Pixels and PNG output


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] floats -> uint8 as if saved to PNG: x·127.5 + 128, clamped, truncated (the FID convention)."""
    return (x * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def image_grid(x: Tensor, nrow: Optional[int] = None) -> Tensor:
    """(B, 3, h, w) in [-1, 1] -> one (3, H, W) grid in [0, 1]; square-ish unless ``nrow`` (images per row) is given."""
    nrow = nrow or max(1, math.ceil(math.sqrt(x.shape[0])))
    return make_grid(to_uint8(x).float() / 255.0, nrow=nrow, padding=2, pad_value=1.0)


def _save_png(pixels: Tensor, path: Path, metadata: Optional[Mapping[str, str]]) -> None:
    """uint8 (3, h, w) -> PNG, ``metadata`` as text chunks (``Image.open(path).text`` reads them back)."""
    info = None
    if metadata:
        info = PngInfo()
        for key, value in metadata.items():
            info.add_text(key, str(value))
    Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy()).save(path, format="PNG", pnginfo=info)


def save_grid(x: Tensor, path: str | Path, nrow: Optional[int] = None,
              metadata: Optional[Mapping[str, str]] = None) -> Tensor:
    """Save an image grid as PNG (with ``metadata`` as text chunks) and return it (for TensorBoard)."""
    grid = image_grid(x, nrow)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The grid holds exact k/255 values (quantised by to_uint8); x·255 + 0.5 truncated gives k back, as torchvision's
    # save_image computes it.
    _save_png((grid * 255 + 0.5).clamp(0, 255).to(torch.uint8), path, metadata)
    return grid


def save_image_files(x: Tensor, outdir: str | Path, names: list[str],
                     metadata: Optional[Sequence[Mapping[str, str]]] = None) -> None:
    """One PNG per image: ``<outdir>/<name>.png`` (uint8-quantised exactly as the grids and FID fakes), each with its
    ``metadata[i]`` as text chunks."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    for index, (image, name) in enumerate(zip(x, names)):
        _save_png(to_uint8(image), out / f"{name}.png", metadata[index] if metadata else None)
