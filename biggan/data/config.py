"""Dataset settings: which kind of dataset, where it is, how it is read ahead, and the demo dataset's size and seed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from biggan.config import Section, number
from biggan.errors import ConfigError

__all__ = ["DataConfig"]


@dataclass
class DataConfig(Section):
    """Where training images come from; the resolution is the model's (``model.resolution``)."""

    where = "data"

    kind: Literal["synthetic", "prepared", "folder"] = "synthetic"  # demo faces | prepare_celebahq output | raw images
    path: str = "datasets"  # synthetic: parent of demo<res>/; prepared: the prepared directory; folder: image folder
    xflip: bool = False  # random horizontal flips of training images (never applied to FID reference statistics)
    prefetch: int = number(2, ge=0)  # batches a background thread reads ahead (pinned, on CUDA); 0: in the step
    workers: int = number(4, ge=0)  # kind folder: processes that decode images (0: decode in the loading thread)
    synthetic_num_images: int = number(4096, ge=1)  # size of the generated demo dataset
    synthetic_seed: int = number(0, ge=0)  # seed of the generated demo dataset (same seed -> same images)

    def check(self, where: str) -> None:
        if not self.path:
            raise ConfigError(f"{where}.path must not be empty; set it to a dataset directory")
