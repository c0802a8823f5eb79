"""FID settings: how often, how many fakes, which extractor depth, and where weights and reference statistics live."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Literal

from biggan.config import Section, number
from biggan.errors import ConfigError

__all__ = ["FIDConfig", "STANDARD_DIMS", "ALLOWED_DIMS", "metric_name"]

STANDARD_DIMS = 2048  # pool3 features: the only depth comparable with published FIDs
ALLOWED_DIMS = (64, 192, 768, 2048)  # pytorch-fid's InceptionV3 output blocks; small ones are cheap CPU monitors


def metric_name(num_samples: int, dims: int, metric: str = "fid") -> str:
    """``fid10k``/``fid50k`` for the standard metric; a non-standard depth is named too, e.g. ``fid1k_d192``.

    FID is biased upward at small N, so the sample count is part of the name and only equal names are comparable. KID
    and precision/recall from the same features are named alike (``kid10k``, ``precision500_d64``).
    """
    count = f"{num_samples // 1000}k" if num_samples % 1000 == 0 else str(num_samples)
    return f"{metric}{count}" if dims == STANDARD_DIMS else f"{metric}{count}_d{dims}"


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
    extra_metrics: list[Literal["kid", "pr"]] = field(default_factory=lambda: ["kid", "pr"])  # computed from the same
    # fakes' features as FID: KID (mean and std over subsets), precision and recall (k = 3)
    kid_subsets: int = number(100, ge=1)  # KID is averaged over this many random subsets (std reported beside it)
    kid_subset_size: int = number(1000, ge=2)  # features per KID subset and set (capped at the fakes / reals there are)
    ref_features: int = number(10000, ge=4)  # real features kept for KID/PR (a fixed random subset; all if fewer)
    best_by: Literal["fid", "kid"] = "fid"  # which metric picks best.pt (kid needs "kid" in extra_metrics)

    @property
    def name(self) -> str:
        """The metric's name in logs, TensorBoard and metrics.jsonl."""
        return metric_name(self.num_samples, self.dims)

    def names(self) -> dict[str, str]:
        """Every logged metric's name: ``fid`` and, when computed, ``kid``, ``kid_std``, ``precision``, ``recall``."""
        names = {"fid": self.name}
        if "kid" in self.extra_metrics:
            names.update(kid=metric_name(self.num_samples, self.dims, "kid"))
            names.update(kid_std=names["kid"] + "_std")
        if "pr" in self.extra_metrics:
            names.update(precision=metric_name(self.num_samples, self.dims, "precision"),
                         recall=metric_name(self.num_samples, self.dims, "recall"))
        return names

    def check(self, where: str) -> None:
        if self.dims not in ALLOWED_DIMS:
            raise ConfigError(f"{where}.dims must be one of {list(ALLOWED_DIMS)}, got {self.dims}")
        if len(set(self.extra_metrics)) != len(self.extra_metrics):
            raise ConfigError(f"{where}.extra_metrics lists a metric twice: {self.extra_metrics}")
        if self.best_by != "fid" and self.best_by not in self.extra_metrics:
            raise ConfigError(f"{where}.best_by is {self.best_by} but {where}.extra_metrics does not compute it; "
                              f"add {self.best_by} to {where}.extra_metrics or set {where}.best_by=fid")
        unused = [] if "kid" in self.extra_metrics else ["kid_subsets", "kid_subset_size"]
        unused += [] if self.extra_metrics else ["ref_features"]
        for key in unused:
            if getattr(self, key) != _DEFAULTS[key]:
                raise ConfigError(f"{where}.{key} is set but {where}.extra_metrics={self.extra_metrics} does not use "
                                  f"it; drop {where}.{key} or add the metric to {where}.extra_metrics")


_DEFAULTS = {f.name: f.default for f in fields(FIDConfig) if f.default is not MISSING}
