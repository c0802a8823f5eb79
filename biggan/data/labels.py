"""Class labels: discovery in a folder with one sub-folder per class, and the labels a class-conditional run uses.

Folder rules are torchvision's ``ImageFolder`` rules, by calling its own ``find_classes`` and ``make_dataset``: every
sub-folder of the root is a class, sorted by name (its index is its position); the images of a class are found
recursively inside its folder (sorted ``os.walk``, symlinks followed) by torchvision's image extensions; an empty
class folder is an error. So labels equal those of ``torchvision.datasets.ImageFolder(root)``. Two things torchvision
does silently are errors here, because they are always mistakes (a mis-nested folder gave every image label 0 in
BigGAN-PyTorch #26): images lying in the root next to the class folders (ImageFolder ignores them) and hidden folders
(``.ipynb_checkpoints`` would become a class).

A run with ``model.conditioning: class`` takes its labels from the dataset; with ``n_classes: 1`` a dataset without
labels is that one class (every label 0: how a pretrained class-conditional G is fine-tuned on faces).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from biggan.errors import ConfigError, DataError

__all__ = ["ClassLabels", "discover_classes", "labels_for_run", "no_labels_error", "UNLABELLED_CLASS"]

UNLABELLED_CLASS = "all images"  # the name of the one class of an unlabelled dataset


@dataclass(frozen=True)
class ClassLabels:
    """One class index per image (dataset order) and the class names (index order)."""

    labels: np.ndarray  # (N,) int64
    names: list[str]

    def counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.names))  # (n_classes,)


def discover_classes(root: str | Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """torchvision ImageFolder's classes and (image path, class index) samples of ``root``; DataError naming the fix."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; check data.path or the SRC argument")
    try:
        classes, class_to_idx = find_classes(root)
    except FileNotFoundError:
        raise DataError(f"{root} has no class sub-folders; a labelled dataset has one sub-folder per class "
                        "(ROOT/<class>/<image>, torchvision ImageFolder layout)") from None
    hidden = [name for name in classes if name.startswith(".")]
    if hidden:
        raise DataError(f"{root / hidden[0]} is a hidden folder, which the ImageFolder rules would make a class; "
                        "move or delete it")
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
    if loose:
        raise DataError(f"{root} holds images directly ({loose[0]}{', ...' if len(loose) > 1 else ''}) next to its "
                        "class folders, which the ImageFolder rules ignore; move them into a class folder")
    try:
        samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as err:
        raise DataError(f"{root}: {err}; every class folder needs at least one image") from None
    return classes, [(Path(path), index) for path, index in samples]


def no_labels_error(what: str, n_classes: int) -> DataError:
    """The one line for a class-conditional run (n_classes > 1) on data without labels."""
    return DataError(
        f"{what} has no class labels, but model.conditioning is class with n_classes {n_classes}; use a folder "
        "with one sub-folder per class (data.kind=folder, or prepare it with `python -m data.prepare_celebahq SRC "
        "OUT --labels --expect-count 0`), or set model.n_classes=1 (one class) or model.conditioning=zhier"
    )


def labels_for_run(dataset: Any, n_classes: int, what: str) -> ClassLabels:
    """The labels a class-conditional run trains on; their class count must be ``n_classes``.

    Args:
        dataset: has ``class_labels`` (ClassLabels or None) and a length.
        what: names the dataset in messages (its path).
    """
    found: Optional[ClassLabels] = dataset.class_labels
    if found is None:
        if n_classes == 1:
            return ClassLabels(np.zeros(len(dataset), dtype=np.int64), [UNLABELLED_CLASS])
        raise no_labels_error(what, n_classes)
    if len(found.names) != n_classes:
        shown = ", ".join(found.names[:4]) + (", ..." if len(found.names) > 4 else "")
        raise ConfigError(f"{what} has {len(found.names)} classes ({shown}) but model.n_classes is {n_classes}; set "
                          f"model.n_classes={len(found.names)}")
    return found
