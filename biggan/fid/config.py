"""FID settings: how often, how many fakes, which extractor depth, and where weights and reference statistics live."""

from __future__ import annotations

from dataclasses import dataclass

from biggan.config import Section, number
from biggan.errors import ConfigError

__all__ = ["FIDConfig", "STANDARD_DIMS", "ALLOWED_DIMS", "metric_name"]

STANDARD_DIMS = 2048  # pool3 features: the only depth comparable with published FIDs
ALLOWED_DIMS = (64, 192, 768, 2048)  # pytorch-fid's InceptionV3 output blocks; small ones are cheap CPU monitors


def metric_name(num_samples: int, dims: int) -> str:
    """``fid10k``/``fid50k`` for the standard metric; a non-standard depth is named too, e.g. ``fid1k_d192``.

    FID is biased upward at small N, so the sample count is part of the name and only equal names are comparable.
    """
    count = f"{num_samples // 1000}k" if num_samples % 1000 == 0 else str(num_samples)
    return f"fid{count}" if dims == STANDARD_DIMS else f"fid{count}_d{dims}"


@dataclass
class FIDConfig(Section):
    """In-loop FID of G_ema against the training set's reference statistics."""

    where = "fid"

    every: int = number(0, ge=0)  # evaluate every this many steps (0 = never)
    num_samples: int = number(10000, ge=2)  # fakes per evaluation (names the metric: fid10k, fid50k); >= 2 for a
    # covariance
    batch_size: int = number(50, ge=1)  # fakes generated and embedded at once
    dims: int = number(2048, ge=1)  # Inception feature depth: 2048 standard; 64/192/768 cheap, named e.g. fid1k_d192
    weights_path: str = ""  # local pt_inception-2015-12-05 file ("" = torch hub cache; never downloaded)
    ref_stats: str = ""  # reference statistics .npz ("" = the one next to the prepared dataset)

    @property
    def name(self) -> str:
        """The metric's name in logs, TensorBoard and metrics.jsonl."""
        return metric_name(self.num_samples, self.dims)

    def check(self, where: str) -> None:
        if self.dims not in ALLOWED_DIMS:
            raise ConfigError(f"{where}.dims must be one of {list(ALLOWED_DIMS)}, got {self.dims}")
