"""Which classes to draw from a class-conditional generator, and grids with one row per class.

Classes are named by index or, when the checkpoint records class names (trained on labelled data, or imported with
``--class-names``), by name. A grid with classes as rows and seeds as columns reuses the same z down each column,
so a row shows the class and a column the latent.

Shape legend: B batch; K seeds (columns); R classes (rows).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from biggan.errors import UserError
from biggan.models import ModelConfig

__all__ = ["class_count", "parse_classes", "grid_classes", "class_grid", "describe_class"]


def class_count(cfg: ModelConfig) -> Optional[int]:
    """Number of classes G takes (None: no class input, as for zhier and smyrf_repro)."""
    return cfg.n_classes if cfg.conditioning == "class" else None


def _one(text: str, n_classes: int, names: Optional[list[str]]) -> int:
    if text.isdigit():
        index = int(text)
        if index < n_classes:
            return index
        raise UserError(f"class {index} does not exist: this generator has {n_classes} classes (0-{n_classes - 1})")
    if names and text in names:
        return names.index(text)
    known = f"names include {', '.join(names[:5])}{'...' if len(names) > 5 else ''}" if names else "no names recorded"
    raise UserError(f"class {text!r} is neither an index in 0-{n_classes - 1} nor a class name ({known}); "
                    "see --list-classes")


def parse_classes(text: str, n_classes: int, names: Optional[list[str]] = None) -> list[int]:
    """``"207"``, ``"0-9"``, ``"1,5,9"`` or ``"goldfish,hen"`` (names recorded in the checkpoint) -> class indices."""
    classes: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        lo, sep, hi = part.partition("-")
        if sep and lo.isdigit() and hi.isdigit():
            first, last = _one(lo, n_classes, names), _one(hi, n_classes, names)
            if last < first:
                raise UserError(f"class range {part!r} is empty; write it low-high, e.g. 0-9")
            classes.extend(range(first, last + 1))
        elif part:
            classes.append(_one(part, n_classes, names))
        else:
            raise UserError(f"class list {text!r} has an empty entry; use e.g. 207, 0-9 or 1,5,9")
    return classes


def grid_classes(n_classes: int, max_rows: int = 8) -> list[int]:
    """Up to ``max_rows`` classes spread evenly over 0..n-1 (all of them when there are few): the training grids."""
    if n_classes <= max_rows:
        return list(range(n_classes))
    return torch.linspace(0, n_classes - 1, max_rows).round().long().tolist()


def class_grid(z: Tensor, classes: list[int]) -> tuple[Tensor, Tensor]:
    """Rows = classes, columns = the K latents of ``z`` (K, dim_z): ((R·K, dim_z), (R·K,)) in row-major order."""
    rows = z.repeat(len(classes), 1)  # (R·K, dim_z): the same latents in every row
    y = torch.tensor(classes, dtype=torch.long).repeat_interleave(z.shape[0])  # (R·K,)
    return rows, y


def describe_class(index: int, names: Optional[list[str]]) -> str:
    return f"{index} ({names[index]})" if names and index < len(names) else str(index)
