"""The prepared dataset format: one uint8 ``(N, 3, res, res)`` ``.npy`` array read by memmap, plus a manifest.

A prepared directory (one resolution) holds::

    images.npy          uint8 (N, 3, res, res), C order: a batch is a fancy index, no JPEG decode per step
    labels.npy          int64 (N,) class index per image, only when prepared from class folders (``--labels``)
    manifest.json       format, resolution, count, resize filter, source form/path/fingerprint, sha256 of the pixels;
                        with labels also ``classes`` (names in index order), ``class_counts`` and ``labels_sha256``
    fid_stats_d<D>.npz  FID reference statistics of all N images at this resolution (D = Inception dims)

The directory is built under a temporary name and renamed into place, so a finished name is always complete.
Both CelebA-HQ (``biggan.data.prepare``) and the demo faces (``biggan.data.synthetic``) are written this way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap

from biggan.data.labels import ClassLabels
from biggan.errors import DataError

__all__ = [
    "FORMAT",
    "ARRAY_FILE",
    "MANIFEST_FILE",
    "stats_filename",
    "read_manifest",
    "PreparedWriter",
    "PreparedDataset",
]

FORMAT = "smyrf-biggan-prepared/1"
ARRAY_FILE = "images.npy"
LABELS_FILE = "labels.npy"
MANIFEST_FILE = "manifest.json"


def stats_filename(dims: int) -> str:
    """Reference statistics live next to the images they describe, one file per Inception depth."""
    return f"fid_stats_d{dims}.npz"


def read_manifest(root: Path) -> dict[str, Any] | None:
    """The manifest of a finished prepared directory, or None if there is none (or it is not ours)."""
    path = Path(root) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def _sha256_of_array(array: np.ndarray, chunk: int = 256) -> str:
    """Hash of the pixel bytes (not the .npy header), streamed in chunks of images."""
    digest = hashlib.sha256()
    for start in range(0, array.shape[0], chunk):
        digest.update(np.ascontiguousarray(array[start:start + chunk]).tobytes())
    return digest.hexdigest()


class PreparedWriter:
    """Fills ``images.npy`` in a temporary directory; :meth:`commit` writes the manifest and renames into place.

    Args:
        class_names: for a labelled dataset (every :meth:`append` then gives the image's label), else None.
    """

    def __init__(self, final_dir: Path, resolution: int, capacity: int,
                 class_names: list[str] | None = None) -> None:
        self.final_dir = Path(final_dir)
        self.class_names = class_names
        self.labels: list[int] = []
        self.tmp_dir = self.final_dir.with_name(f".{self.final_dir.name}.tmp{os.getpid()}")
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True)
        self.resolution = resolution
        self.array = open_memmap(self.tmp_dir / ARRAY_FILE, mode="w+", dtype=np.uint8,
                                 shape=(capacity, 3, resolution, resolution))  # (N, 3, res, res)
        self.count = 0

    def append(self, image: np.ndarray, label: int | None = None) -> None:
        """Add one uint8 ``(3, res, res)`` image (and its class index when the dataset is labelled)."""
        if (label is None) != (self.class_names is None):
            raise ValueError("a labelled writer takes a label with every image, an unlabelled one none")
        self.array[self.count] = image
        self.count += 1
        if label is not None:
            self.labels.append(label)

    def _shrink_to_count(self) -> None:
        """Skipped bad files leave unused rows: rewrite the array at its true length (rare path)."""
        src = self.tmp_dir / ARRAY_FILE
        dst = self.tmp_dir / f"{ARRAY_FILE}.short"
        short = open_memmap(dst, mode="w+", dtype=np.uint8, shape=(self.count, *self.array.shape[1:]))
        short[:] = self.array[:self.count]
        short.flush()
        del short
        self.array = None
        os.replace(dst, src)
        self.array = np.load(src, mmap_mode="r")

    def finish(self) -> np.ndarray:
        """Flush the pixels and return them read-only (for the reference statistics before commit)."""
        if self.count == 0:
            raise DataError(f"no usable images for {self.final_dir}; every source image was skipped")
        if self.count < self.array.shape[0]:
            self._shrink_to_count()
        else:
            self.array.flush()
            self.array = np.load(self.tmp_dir / ARRAY_FILE, mmap_mode="r")
        return self.array

    def commit(self, manifest: dict[str, Any]) -> Path:
        """Write the manifest (with count and content hash) and atomically move the directory into place."""
        manifest = {"format": FORMAT, "resolution": self.resolution, "count": self.count,
                    "sha256": _sha256_of_array(self.array), **manifest}
        files = [ARRAY_FILE, MANIFEST_FILE]
        if self.class_names is not None:
            labels = np.asarray(self.labels, dtype=np.int64)  # (N,)
            np.save(self.tmp_dir / LABELS_FILE, labels)
            manifest |= {"classes": self.class_names, "class_counts": np.bincount(
                labels, minlength=len(self.class_names)).tolist(), "labels_sha256": _sha256_of_array(labels)}
            files.append(LABELS_FILE)
        (self.tmp_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        for name in files:
            with open(self.tmp_dir / name, "rb") as f:
                os.fsync(f.fileno())
        self.array = None
        if self._same_as_final(manifest):  # another process (rank) wrote the same pixels first
            shutil.rmtree(self.tmp_dir)
            return self.final_dir
        if self.final_dir.exists():  # an outdated preparation (other source or filter): replaced as a whole
            shutil.rmtree(self.final_dir)
        try:
            os.replace(self.tmp_dir, self.final_dir)
        except OSError:
            if not self._same_as_final(manifest):
                raise
            shutil.rmtree(self.tmp_dir)
        return self.final_dir

    def _same_as_final(self, manifest: dict[str, Any]) -> bool:
        final = read_manifest(self.final_dir)
        return bool(final) and final["sha256"] == manifest["sha256"] and final["count"] == manifest["count"] \
            and final.get("labels_sha256") == manifest.get("labels_sha256")

    def abort(self) -> None:
        """Drop the temporary directory after a failure."""
        self.array = None
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


def _read_labels(root: Path, manifest: dict[str, Any]) -> ClassLabels | None:
    """The labels of a directory prepared with ``--labels`` (None for one prepared without)."""
    if "classes" not in manifest:
        return None
    path, count, classes = root / LABELS_FILE, manifest["count"], manifest["classes"]
    try:
        labels = np.load(path)
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is unreadable ({err}); delete {root} and prepare it again") from err
    if labels.shape != (count,) or labels.dtype != np.int64 or (count and not 0 <= labels.min() <= labels.max()
                                                                < len(classes)):
        raise DataError(f"{path} holds {labels.dtype} {labels.shape}, not {count} class indices below "
                        f"{len(classes)}; delete {root} and prepare it again")
    return ClassLabels(labels, list(classes))


class PreparedDataset:
    """Memmap reader of a prepared directory; uint8 ``(3, res, res)`` items, fast batched access."""

    def __init__(self, root: str | Path, resolution: int) -> None:
        root = Path(root)
        if read_manifest(root) is None and read_manifest(root / str(resolution)) is not None:
            root = root / str(resolution)  # accept the prepare command's OUT as well as OUT/<res>
        manifest = read_manifest(root)
        if manifest is None:
            hint = "generate it with `python -m data.prepare_celebahq SRC OUT --resolution RES`"
            what = "does not exist" if not root.exists() else f"has no valid {MANIFEST_FILE}"
            raise DataError(f"prepared dataset {root} {what}; {hint}")
        if manifest["resolution"] != resolution:
            raise DataError(f"prepared dataset {root} is {manifest['resolution']}px but the model is {resolution}px; "
                            f"prepare it with --resolution {resolution} or set model.resolution to "
                            f"{manifest['resolution']}")
        try:
            self.images = np.load(root / ARRAY_FILE, mmap_mode="r")  # (N, 3, res, res) uint8
        except (OSError, ValueError) as err:
            raise DataError(f"{root / ARRAY_FILE} is unreadable ({err}); delete {root} and prepare it again") from err
        expected = (manifest["count"], 3, resolution, resolution)
        if self.images.shape != expected or self.images.dtype != np.uint8:
            raise DataError(f"{root / ARRAY_FILE} holds {self.images.dtype} {self.images.shape}, manifest says uint8 "
                            f"{expected}; delete {root} and prepare it again")
        self.root = root
        self.resolution = resolution
        self.manifest = manifest
        self.class_labels = _read_labels(root, manifest)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.images[index]))  # (3, res, res) uint8

    def get_batch(self, indices: np.ndarray) -> torch.Tensor:
        """uint8 ``(B, 3, res, res)`` in the order of ``indices``; reads the memmap in ascending order."""
        indices = np.asarray(indices, dtype=np.int64)
        order = np.argsort(indices, kind="stable")
        batch = np.empty((len(indices), *self.images.shape[1:]), dtype=np.uint8)  # (B, 3, res, res)
        batch[order] = self.images[indices[order]]
        return torch.from_numpy(batch)

    def close(self) -> None:
        """Nothing to stop: a memmap gather needs no worker processes (the same call as ``FolderDataset.close``)."""

    def reference_stats_path(self, dims: int) -> Path:
        """The FID reference statistics of this dataset at ``dims`` (may not exist yet)."""
        return self.root / stats_filename(dims)
