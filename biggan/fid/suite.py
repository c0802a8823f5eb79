"""One evaluation, several metrics: FID, KID and precision/recall from a single Inception pass over the fakes.

:class:`MetricSuite` runs the FID evaluation (:class:`biggan.fid.evaluate.FIDEvaluator`, unchanged) with a
:class:`FeatureTap` on its extractor, so the fakes' features that FID streams into its statistics are also kept
(float64, ``num_samples`` × dims on the metric device: 164 MB at fid10k, 2048 dims). KID (:mod:`biggan.fid.kid`)
and precision/recall (:mod:`biggan.fid.precision_recall`) then compare them with the reference features
(:mod:`biggan.fid.reference_features`). With several processes each one embeds its share; the shares are gathered with
the same ``reduce`` (sum over processes) that FID uses, each process writing its rows into its own slot of a zero
buffer, so every process ends with every fake's features and the same values. KID and PR arithmetic runs in float64
on ``metric_device`` (the runtime's: the GPU where there is one, else the host).

Metric names carry N and the feature size like FID's (:meth:`FIDConfig.names`: ``kid10k``, ``precision500_d64``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from biggan.errors import DataError
from biggan.fid.config import FIDConfig
from biggan.fid.evaluate import FIDEvaluator, ImageArray, build_fid_evaluator
from biggan.fid.extractor import load_extractor
from biggan.fid.kid import kernel_inception_distance
from biggan.fid.precision_recall import precision_recall
from biggan.fid.reference_features import (
    FeatureTap,
    RefFeatures,
    ensure_reference_features,
    load_features,
    reference_features_path,
    subset_indices,
)

__all__ = ["MetricSuite", "build_metric_suite", "gather_rows"]

LOWER_IS_BETTER = ("fid", "kid")  # the metrics a best checkpoint can be chosen by


def gather_rows(local: torch.Tensor, reduce: Optional[Callable[[torch.Tensor], torch.Tensor]], world_size: int,
                rank: int) -> torch.Tensor:
    """Every process's ``local`` (n, dims) rows, in rank order (world_size · n, dims), via a sum over processes.

    Each process fills only its own slot of a zero buffer, so the sum is a gather (exact: x + 0 = x). The buffer lives
    where ``local`` does (the metric device: NCCL reduces GPU tensors only).
    """
    if world_size == 1 or reduce is None:
        return local
    buffer = torch.zeros(world_size, *local.shape, dtype=local.dtype, device=local.device)  # (world, n, dims)
    buffer[rank] = local
    return reduce(buffer).to(local.device, local.dtype).reshape(-1, local.shape[1])  # (world · n, dims)


@dataclass
class MetricSuite:
    """What the training loop calls at each evaluation; returns ``{metric name: value}``."""

    fid: FIDEvaluator
    names: dict[str, str]  # metric -> logged name (FIDConfig.names)
    best_by: str  # the metric that picks best.pt ("fid" or "kid")
    ref: Optional[RefFeatures]  # None when only FID is computed
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    metric_device: torch.device | str = "cpu"

    @property
    def name(self) -> str:
        """The FID's name (``fid10k``)."""
        return self.fid.name

    @property
    def best_name(self) -> str:
        """The logged name of the metric that picks best.pt (``fid10k`` or ``kid10k``)."""
        return self.names[self.best_by]

    @property
    def lower_is_better(self) -> list[str]:
        """Logged names whose best value is tracked (FID, KID when computed)."""
        return [self.names[m] for m in LOWER_IS_BETTER if m in self.names]

    @property
    def identity(self) -> dict[str, Any]:
        """FID's identity (extractor, reference statistics) plus the reference features'."""
        if self.ref is None:
            return dict(self.fid.identity)
        return {**self.fid.identity, "ref_features": str(self.ref.path), "ref_features_n": len(self.ref.indices)}

    def __call__(self, sample_uint8: Callable[[int], torch.Tensor],
                 reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, world_size: int = 1,
                 rank: int = 0) -> dict[str, float]:
        """Every metric of ``fid.num_samples`` fakes in total, split evenly over ``world_size`` processes."""
        batches: list[torch.Tensor] = []
        fid = self.fid if self.ref is None else dataclasses.replace(
            self.fid, extractor=FeatureTap(self.fid.extractor, lambda f: batches.append(f.to(torch.float64))))
        values = {self.names["fid"]: fid(sample_uint8, reduce=reduce, world_size=world_size)}
        if self.ref is None:
            return values
        fake = gather_rows(torch.cat(batches), reduce, world_size, rank)  # (N, dims)
        real = self.ref.features  # (n_ref, dims)
        if "kid" in self.names:
            kid, kid_std = kernel_inception_distance(real, fake, self.kid_subsets, self.kid_subset_size,
                                                     device=self.metric_device)
            values.update({self.names["kid"]: kid, self.names["kid_std"]: kid_std})
        if "precision" in self.names:
            precision, recall = precision_recall(real, fake, device=self.metric_device)
            values.update({self.names["precision"]: precision, self.names["recall"]: recall})
        return values


def _check_features(ref: RefFeatures, identity: str, n_total: Optional[int], cap: int) -> None:
    """Refuse reference features made by another extractor or (for a dataset's own) from another subset."""
    if ref.extractor != identity:
        raise DataError(f"KID/PR reference features {ref.path} were made by {ref.extractor}, not {identity}; "
                        "delete the file to recompute it with the current weights")
    same_subset = n_total is None or (ref.n_total == n_total
                                      and np.array_equal(ref.indices, subset_indices(n_total, cap)))
    if not same_subset:
        raise DataError(f"KID/PR reference features {ref.path} are {len(ref.indices)} of {ref.n_total} images, not the "
                        f"fid.ref_features={cap} of {n_total} this run uses; delete the file to recompute it")


def build_metric_suite(cfg: FIDConfig, dataset: Optional[ImageArray], device: torch.device | str,
                       compute_missing: bool = True, metric_device: torch.device | str = "cpu") -> MetricSuite:
    """The extractor, FID reference statistics and (for KID/PR) reference features, computed where missing.

    With ``compute_missing`` (main process) and a dataset, missing statistics and features come from one pass over the
    dataset; other processes read what the main one wrote. Raises WeightsError/DataError/ConfigError as FID does.
    """
    extractor = load_extractor(cfg.weights_path or None, device, cfg.dims, feature_device=metric_device)
    own_reference = not cfg.ref_stats and dataset is not None
    if cfg.extra_metrics and own_reference and compute_missing:
        ensure_reference_features(dataset, extractor, cfg.batch_size, cfg.ref_features)
    fid = build_fid_evaluator(cfg, dataset, device, compute_missing=compute_missing, extractor=extractor)
    ref = None
    if cfg.extra_metrics:
        ref = load_features(reference_features_path(fid.ref.path))
        _check_features(ref, extractor.identity, len(dataset) if own_reference else None, cfg.ref_features)
    return MetricSuite(fid=fid, names=cfg.names(), best_by=cfg.best_by, ref=ref, kid_subsets=cfg.kid_subsets,
                       kid_subset_size=cfg.kid_subset_size, metric_device=metric_device)
