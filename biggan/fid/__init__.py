"""Standard FID: pytorch-fid's InceptionV3 with local TF-Inception (2015-12-05) weights, float64 streaming stats;
KID and precision/recall from the same features (:mod:`biggan.fid.suite`).

Images enter as uint8 ``(B, 3, h, w)`` (B batch, h×w size); features leave as float64 ``(B, dims)``.
"""

from __future__ import annotations

from biggan.fid.config import FIDConfig, metric_name
from biggan.fid.evaluate import (
    FIDEvaluator,
    build_fid_evaluator,
    ensure_reference_stats,
    fid_of_generator,
    quantize_uint8,
    reference_stats_current,
    stats_of_batches,
)
from biggan.fid.extractor import FIDExtractor, load_extractor
from biggan.fid.stats import FeatureStats, RefStats, frechet_distance, load_stats, save_stats
from biggan.fid.suite import MetricSuite, build_metric_suite
from biggan.fid.weights import WEIGHTS_FILENAME, default_weights_path

__all__ = [
    "FIDConfig",
    "metric_name",
    "FIDEvaluator",
    "build_fid_evaluator",
    "ensure_reference_stats",
    "fid_of_generator",
    "quantize_uint8",
    "reference_stats_current",
    "stats_of_batches",
    "FIDExtractor",
    "load_extractor",
    "FeatureStats",
    "RefStats",
    "frechet_distance",
    "load_stats",
    "save_stats",
    "MetricSuite",
    "build_metric_suite",
    "WEIGHTS_FILENAME",
    "default_weights_path",
]
