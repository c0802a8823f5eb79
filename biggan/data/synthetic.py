"""The demo dataset: procedural "faces" the project draws itself (no download), deterministic per seed.

Each image is a cartoon portrait on a varied background — gradient plus a few soft shapes; shoulders; hair; a head
ellipse of varied skin tone, size and position; eyes with irises, brows, nose and a mouth of varied width and
curvature. Enough structure and variety that a small GAN's samples visibly improve and FID falls within minutes on a
CPU, unlike noise or single shapes. Image ``i`` depends only on ``(seed, i)``. Shapes are drawn at 4x and
BOX-downscaled (antialiased, like the CelebA-HQ preparation), then stored in the same prepared format as CelebA-HQ so
the same :class:`PreparedDataset` reads both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from biggan.data.prepared import PreparedWriter, read_manifest
from biggan.images import to_chw

__all__ = ["ensure_synthetic_dataset", "render_face", "synthetic_dir"]

VERSION = 1  # bump when the drawing changes, so old datasets are regenerated
SUPERSAMPLE = 4
SKIN = np.array([[255, 224, 196], [234, 192, 150], [198, 145, 105], [141, 94, 60], [92, 58, 38]], dtype=float)
HAIR = np.array([[20, 16, 14], [84, 52, 30], [150, 100, 50], [220, 190, 120], [170, 60, 30], [150, 150, 150]],
                dtype=float)
IRIS = np.array([[60, 40, 25], [40, 90, 160], [60, 120, 70], [90, 90, 90]], dtype=float)


def _colour(c: np.ndarray) -> tuple[int, int, int]:
    r, g, b = np.clip(np.round(c), 0, 255).astype(int)
    return int(r), int(g), int(b)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Vertical two-colour gradient with a few low-contrast blobs."""
    top, bottom = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    t = np.linspace(0, 1, size)[:, None, None]  # (h, 1, 1)
    grad = (1 - t) * top + t * bottom  # (h, 1, 3)
    img = Image.fromarray(np.broadcast_to(grad, (size, size, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(0, 4)):
        x, y = rng.uniform(0, size, 2)
        r = rng.uniform(0.05, 0.2) * size
        shade = (top + bottom) / 2 + rng.uniform(-50, 50, 3)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_colour(shade))
    return img


def render_face(rng: np.random.Generator, resolution: int) -> Image.Image:
    """One RGB portrait at ``resolution`` drawn from ``rng``."""
    s = resolution * SUPERSAMPLE
    img = _background(rng, s)
    draw = ImageDraw.Draw(img)
    skin = SKIN[rng.integers(len(SKIN))] * 0.6 + SKIN[rng.integers(len(SKIN))] * 0.4 + rng.uniform(-12, 12, 3)
    hair = HAIR[rng.integers(len(HAIR))] + rng.uniform(-15, 15, 3)
    cx, cy = s * rng.uniform(0.42, 0.58), s * rng.uniform(0.45, 0.58)
    rx = s * rng.uniform(0.2, 0.28)
    ry = rx * rng.uniform(1.15, 1.35)

    # Shoulders (clothing), then hair behind the head, then the head.
    cloth = rng.uniform(10, 245, 3)
    draw.ellipse([cx - 2.1 * rx, cy + 0.9 * ry, cx + 2.1 * rx, cy + 3.2 * ry], fill=_colour(cloth))
    draw.rectangle([cx - 0.35 * rx, cy + 0.6 * ry, cx + 0.35 * rx, cy + 1.15 * ry], fill=_colour(skin * 0.9))
    hair_len = rng.uniform(0.0, 1.0)  # 0: short crop, 1: shoulder length
    draw.ellipse([cx - 1.12 * rx, cy - 1.15 * ry, cx + 1.12 * rx, cy + (0.1 + 0.9 * hair_len) * ry],
                 fill=_colour(hair))
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=_colour(skin))
    fringe = rng.uniform(0.45, 0.8)  # how far the fringe comes down the forehead
    draw.chord([cx - 1.05 * rx, cy - 1.12 * ry, cx + 1.05 * rx, cy - (1 - 2 * fringe) * ry * 0.6],
               start=180, end=360, fill=_colour(hair))

    # Eyes with irises, brows.
    ey = cy - rng.uniform(0.0, 0.15) * ry
    ex, ew, eh = rng.uniform(0.35, 0.45) * rx, rng.uniform(0.14, 0.2) * rx, rng.uniform(0.08, 0.12) * ry
    iris = IRIS[rng.integers(len(IRIS))]
    brow_lift = rng.uniform(0.12, 0.25) * ry
    for side in (-1, 1):
        x = cx + side * ex
        draw.ellipse([x - ew, ey - eh, x + ew, ey + eh], fill=(245, 245, 245))
        ir = 0.75 * eh
        draw.ellipse([x - ir, ey - ir, x + ir, ey + ir], fill=_colour(iris))
        draw.line([x - ew, ey - brow_lift, x + ew, ey - brow_lift - side * rng.uniform(-0.03, 0.03) * ry],
                  fill=_colour(hair * 0.8), width=max(1, int(0.05 * ry)))

    # Nose and mouth.
    ny = cy + rng.uniform(0.15, 0.25) * ry
    draw.line([cx, ey + eh, cx - 0.06 * rx, ny, cx + 0.04 * rx, ny], fill=_colour(skin * 0.75),
              width=max(1, int(0.03 * ry)))
    my, mw = cy + rng.uniform(0.45, 0.58) * ry, rng.uniform(0.25, 0.45) * rx
    smile = rng.uniform(0.03, 0.15) * ry
    lips = skin * 0.5 + np.array([160, 40, 50]) * 0.5
    draw.chord([cx - mw, my - smile, cx + mw, my + smile], start=0, end=180, fill=_colour(lips))
    return img.resize((resolution, resolution), Image.Resampling.BOX)


def synthetic_dir(root: str | Path, resolution: int) -> Path:
    """Where the demo dataset at ``resolution`` lives: ``<root>/demo<res>``."""
    return Path(root) / f"demo{resolution}"


def ensure_synthetic_dataset(root: str | Path, resolution: int, num_images: int, seed: int) -> Path:
    """Write the demo dataset once in the prepared format and return its directory; reuse it when it matches.

    Its FID reference statistics are computed by the training loop on first use (``build_fid_evaluator``).
    """
    out = synthetic_dir(root, resolution)
    source = {"form": "synthetic", "seed": seed, "version": VERSION}
    manifest = read_manifest(out)
    if not (manifest and manifest.get("source") == source and manifest["count"] == num_images
            and manifest["resolution"] == resolution):
        writer = PreparedWriter(out, resolution, num_images)
        try:
            for i in tqdm(range(num_images), desc=f"demo faces {resolution}px", unit="img", mininterval=2, disable=None):
                writer.append(to_chw(render_face(np.random.default_rng([seed, i]), resolution)))
            writer.finish()
            writer.commit({"source": source, "filter": "box"})
        except BaseException:
            writer.abort()
            raise
    return out
