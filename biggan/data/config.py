"""Dataset settings: which kind of dataset, where it is, and the demo dataset's size and seed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from biggan.errors import ConfigError

__all__ = ["DataConfig"]


@dataclass
class DataConfig:
    """Where training images come from; the resolution is the model's (``model.resolution``)."""

    kind: Literal["synthetic", "prepared", "folder"] = "synthetic"  # demo faces | prepare_celebahq output | raw images
    path: str = "datasets"  # synthetic: parent of demo<res>/; prepared: the prepared directory; folder: image folder
    xflip: bool = False  # random horizontal flips of training images (never applied to FID reference statistics)
    synthetic_num_images: int = 4096  # size of the generated demo dataset
    synthetic_seed: int = 0  # seed of the generated demo dataset (same seed -> same images)

    def validate(self) -> None:
        """Catch empty paths and empty demo datasets before any file is touched."""
        if not self.path:
            raise ConfigError("data.path must not be empty; set it to a dataset directory")
        if self.synthetic_num_images < 1:
            raise ConfigError(f"data.synthetic_num_images must be >= 1, got {self.synthetic_num_images}")
