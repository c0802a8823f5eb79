"""KID and precision/recall: the published definitions on fixed features, torchmetrics' KID, the reference features
file, and the suite that computes FID, KID and PR from one Inception pass."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from biggan.errors import ConfigError, DataError
from biggan.fid import FIDConfig
from biggan.fid.kid import kernel_inception_distance, mmd2_unbiased
from biggan.fid.precision_recall import knn_radii, precision_recall
from biggan.fid.reference_features import (
    ensure_reference_features,
    features_current,
    load_features,
    reference_features_path,
    save_features,
    subset_indices,
)
from biggan.fid.suite import build_metric_suite, gather_rows

pytestmark = pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")


def _gauss(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


# --- KID --------------------------------------------------------------------------------------------------------------

def test_mmd2_equals_the_definition_term_by_term():
    x, y = _gauss(5, 3, 0), _gauss(4, 3, 1, 0.5)
    k = lambda a, b: (float(a @ b) / 3 + 1) ** 3  # noqa: E731  the cubic polynomial kernel, one pair at a time
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(5), 2)) / (5 * 4)
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(4), 2)) / (4 * 3)
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(4)) / (5 * 4)
    assert float(mmd2_unbiased(x, y)) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def _kid_of_a_set_with_itself(x: torch.Tensor) -> float:
    """Closed form of the unbiased estimator on identical sets: (2/m)(mean off-diagonal - mean diagonal kernel)."""
    m, k = x.shape[0], (x @ x.T / x.shape[1] + 1) ** 3
    off = (k.sum() - k.diagonal().sum()) / (m * (m - 1))
    return float(2 / m * (off - k.diagonal().mean()))


def test_kid_closed_forms():
    x = _gauss(400, 16, 2)
    # Identical sets: O(1/m), slightly negative (the diagonal terms the unbiased estimator leaves out), -> 0 with m.
    same, _ = kernel_inception_distance(x, x, subsets=1, subset_size=400)
    assert same == pytest.approx(_kid_of_a_set_with_itself(x), rel=1e-10) and -0.05 < same < 0
    bigger = _gauss(4000, 16, 2)
    assert abs(kernel_inception_distance(bigger, bigger, subsets=1, subset_size=4000)[0]) < abs(same) / 5
    # Two samples of one distribution: 0 in expectation, within a few standard deviations of the subset spread.
    mean, std = kernel_inception_distance(x, _gauss(400, 16, 3), subsets=50, subset_size=100)
    assert std > 0 and abs(mean) < 3 * std
    # Far apart clusters: large.
    far, _ = kernel_inception_distance(x, _gauss(400, 16, 4, shift=5.0), subsets=10, subset_size=100)
    assert far > 100 * abs(mean) and far > 1.0


def test_kid_is_deterministic_and_leaves_the_training_rng_alone():
    x, y = _gauss(300, 8, 5), _gauss(200, 8, 6, 0.3)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = kernel_inception_distance(x, y, subsets=20, subset_size=100)
    assert torch.equal(torch.get_rng_state(), before)
    assert kernel_inception_distance(x, y, subsets=20, subset_size=100) == first
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(x[:1], y)


def _torchmetrics_kid():
    try:
        from torchmetrics.image.kid import KernelInceptionDistance
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("torchmetrics missing in CI: it is pinned in requirements/main.txt")
        pytest.skip("torchmetrics not installed (pip install -r requirements/main.txt)")
    return KernelInceptionDistance


def test_kid_matches_torchmetrics_on_fixed_features():
    """With one subset holding every feature, no subset draw is involved and the two implementations must agree;
    over many subsets of different draws the means agree within their spread."""
    KernelInceptionDistance = _torchmetrics_kid()
    real, fake = _gauss(300, 32, 7).abs(), (_gauss(300, 32, 8) * 0.9 + 0.2).abs()  # Inception features are >= 0
    metric = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=1, subset_size=300)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    theirs, _ = metric.compute()
    ours, std = kernel_inception_distance(real, fake, subsets=1, subset_size=300)
    assert ours == pytest.approx(float(theirs), rel=1e-10) and std == 0.0

    metric = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=100, subset_size=100)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    theirs_mean, theirs_std = (float(v) for v in metric.compute())
    ours_mean, ours_std = kernel_inception_distance(real, fake, subsets=100, subset_size=100)
    assert ours_mean == pytest.approx(theirs_mean, abs=3 * theirs_std / 10)  # 100 subsets: sd of the mean ~ std/10
    assert ours_std == pytest.approx(theirs_std, rel=0.3)


# --- precision and recall ---------------------------------------------------------------------------------------------

def _pr_by_definition(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Kynkäänniemi et al. 2019, literally: k-th neighbour radii by sorting, then a loop over every pair."""
    def radii(points):
        return [sorted(float((p - q).norm()) for j, q in enumerate(points) if j != i)[k - 1]
                for i, p in enumerate(points)]

    def inside(x, points, r):
        return any(float((x - p).norm()) <= r[j] for j, p in enumerate(points))

    real_r, fake_r = radii(real), radii(fake)
    precision = np.mean([inside(f, real, real_r) for f in fake])
    recall = np.mean([inside(r, fake, fake_r) for r in real])
    return float(precision), float(recall)


def test_precision_recall_equal_the_definition():
    real, fake = _gauss(40, 5, 9), _gauss(30, 5, 10, 0.7) * 1.3
    assert precision_recall(real, fake, block=7) == pytest.approx(_pr_by_definition(real, fake))


def test_precision_recall_closed_forms():
    x = _gauss(200, 8, 11)
    assert precision_recall(x, x) == (1.0, 1.0)  # identical sets: every point is inside its own ball
    assert precision_recall(x, _gauss(200, 8, 12, shift=100.0)) == (0.0, 0.0)  # far apart clusters
    # A collapsed G: all fakes near one real image -> they look real (precision 1) but cover little (recall small).
    collapsed = x[:1] + 1e-3 * _gauss(200, 8, 13)
    precision, recall = precision_recall(x, collapsed)
    assert precision == 1.0 and recall < 0.05


def test_knn_radius_is_the_kth_other_point():
    points = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0]], dtype=torch.float64)
    assert knn_radii(points, k=1).tolist() == [1.0, 1.0, 2.0, 3.0, 4.0]
    assert knn_radii(points, k=3).tolist() == [6.0, 5.0, 3.0, 5.0, 9.0]
    with pytest.raises(ValueError, match="more than 3"):
        knn_radii(points[:3])


# --- gathering, reference features, the suite -------------------------------------------------------------------------

def test_gather_rows_is_exact_over_processes():
    parts = [_gauss(3, 4, 20 + r) for r in range(3)]
    buffers = []

    def reduce(buffer):  # what an all-reduce sum over 3 processes returns to each of them
        buffers.append(buffer.clone())
        return buffer if len(buffers) < 3 else sum(buffers)

    for rank, part in enumerate(parts):
        gathered = gather_rows(part, reduce, world_size=3, rank=rank)
    assert torch.equal(gathered, torch.cat(parts))
    assert gather_rows(parts[0], None, 1, 0) is parts[0]


def test_gather_rows_reduces_on_the_features_device():
    """Issue 12 item 1: the gather buffer lives where the features do (the GPU under NCCL), never on the host; a
    'meta' tensor stands for the GPU."""
    devices = []

    def reduce(buffer):
        devices.append(buffer.device)
        return buffer

    out = gather_rows(torch.zeros(4, 3, dtype=torch.float64, device="meta"), reduce, world_size=2, rank=1)
    assert devices == [torch.device("meta")] and out.device.type == "meta" and out.shape == (8, 3)


def test_subset_indices_are_fixed_capped_and_sorted():
    assert subset_indices(5, 10).tolist() == [0, 1, 2, 3, 4]
    a = subset_indices(1000, 100)
    assert len(a) == 100 and len(set(a.tolist())) == 100 and (np.diff(a) > 0).all()
    assert np.array_equal(a, subset_indices(1000, 100))


class _Counting(torch.nn.Module):
    """A stand-in extractor (mean colour and its square: 6 dims) that counts the images it embeds."""

    dims, identity = 6, "stand-in"

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.images = 0

    def forward(self, images):
        self.images += images.shape[0]
        mean = images.double().mean(dim=(2, 3)) / 255  # (B, 3)
        return torch.cat([mean, mean ** 2], dim=1)  # (B, 6)


def _dataset(tmp_path, n=24):
    from biggan.data import PreparedDataset, ensure_synthetic_dataset

    return PreparedDataset(ensure_synthetic_dataset(tmp_path, 16, n, seed=0), 16)


def test_reference_features_one_pass_reuse_and_subset_only_pass(tmp_path):
    dataset, extractor = _dataset(tmp_path), _Counting()
    path = ensure_reference_features(dataset, extractor, batch_size=5, cap=10)
    assert extractor.images == 24  # statistics and the subset's features from one pass over the 24 images
    assert path == reference_features_path(dataset.reference_stats_path(6))
    ref = load_features(path)
    assert ref.features.shape == (10, 6) and ref.features.dtype == torch.float32 and ref.n_total == 24
    expected = extractor(dataset.get_batch(subset_indices(24, 10))).float()
    assert torch.equal(ref.features, expected)
    extractor.images = 0
    ensure_reference_features(dataset, extractor, batch_size=5, cap=10)
    assert extractor.images == 0  # both current: nothing recomputed
    path.unlink()
    ensure_reference_features(dataset, extractor, batch_size=5, cap=10)
    assert extractor.images == 10  # statistics still current: only the subset is embedded
    assert not features_current(path, "stand-in", 24, cap=12) and features_current(path, "stand-in", 24, cap=10)


def test_reference_features_file_round_trip_and_bad_files(tmp_path):
    path = save_features(tmp_path / "f.features.npz", torch.ones(3, 2), np.array([0, 4, 7]), 9, "ext")
    ref = load_features(path)
    assert ref.indices.tolist() == [0, 4, 7] and ref.n_total == 9 and ref.extractor == "ext"
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed into place
    with pytest.raises(DataError, match="not found.*extra_metrics"):
        load_features(tmp_path / "none.features.npz")
    (tmp_path / "bad.features.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="unreadable.*delete"):
        load_features(tmp_path / "bad.features.npz")


def test_suite_of_the_dataset_against_itself(tmp_path, monkeypatch):
    """Fakes = the reference reals: FID ~ 0, KID ~ 0, precision = recall = 1, under the metric names; best_by picks."""
    import biggan.fid.suite as suite

    dataset, extractor = _dataset(tmp_path), _Counting()
    monkeypatch.setattr(suite, "load_extractor", lambda *args, **kwargs: extractor)
    cfg = FIDConfig(every=1, num_samples=24, batch_size=8, dims=64, ref_features=24, kid_subset_size=24, kid_subsets=3,
                    best_by="kid")
    metrics = build_metric_suite(cfg, dataset, "cpu")
    assert extractor.images == 24  # one pass: statistics and features
    reals = iter(dataset.get_batch(np.arange(24)).split(8))
    values = metrics(lambda n: next(reals))
    assert set(values) == {"fid24_d64", "kid24_d64", "kid24_d64_std", "precision24_d64", "recall24_d64"}
    assert abs(values["fid24_d64"]) < 1e-6 and values["kid24_d64_std"] < 1e-12  # every subset holds all 24
    # the reals went through float32 storage, the fakes did not: equal to ~1e-8
    assert values["kid24_d64"] == pytest.approx(_kid_of_a_set_with_itself(metrics.ref.features.double()), rel=1e-6)
    assert values["precision24_d64"] == values["recall24_d64"] == 1.0
    assert metrics.best_name == "kid24_d64" and metrics.lower_is_better == ["fid24_d64", "kid24_d64"]
    assert metrics.identity["ref_features_n"] == 24

    only_fid = build_metric_suite(FIDConfig(every=1, num_samples=24, batch_size=8, dims=64, extra_metrics=[]),
                                  dataset, "cpu")
    reals = iter(dataset.get_batch(np.arange(24)).split(8))
    assert set(only_fid(lambda n: next(reals))) == {"fid24_d64"} and only_fid.ref is None

    # What a non-main process (which reads, never computes) says about a file that does not fit its run:
    with pytest.raises(DataError, match="fid.ref_features=12 of 24"):
        suite._check_features(metrics.ref, "stand-in", 24, cap=12)
    with pytest.raises(DataError, match="were made by stand-in, not other"):
        suite._check_features(metrics.ref, "other", 24, cap=24)
    suite._check_features(metrics.ref, "stand-in", None, cap=12)  # a user's own file: only the extractor must match


@pytest.mark.parametrize("fields, words", [
    ({"best_by": "kid", "extra_metrics": ["pr"]}, "best_by"),
    ({"extra_metrics": ["kid", "kid"]}, "twice"),
    ({"extra_metrics": ["pr"], "kid_subsets": 10}, "kid_subsets"),
    ({"extra_metrics": [], "ref_features": 500}, "ref_features"),
])
def test_config_rules(fields, words):
    with pytest.raises(ConfigError, match=words):
        FIDConfig(**fields)


def test_metric_names_carry_n_and_the_feature_size():
    assert FIDConfig(num_samples=10000).names() == {"fid": "fid10k", "kid": "kid10k", "kid_std": "kid10k_std",
                                                    "precision": "precision10k", "recall": "recall10k"}
    assert FIDConfig(num_samples=500, dims=64, extra_metrics=["kid"]).names()["kid"] == "kid500_d64"


def test_real_inception_features_two_face_sets(tmp_path):
    """With the real weights: two disjoint sets of demo faces are close (KID near 0, PR high), faces vs noise far."""
    from tests.test_fid import _faces, real_weights  # noqa: F401  (shared helpers)

    real_weights()
    from biggan.fid import load_extractor
    from biggan.images import decode_rgb, list_image_files, to_chw

    extractor = load_extractor(None, dims=64)

    def feats(folder: Path) -> torch.Tensor:
        images = [torch.from_numpy(to_chw(decode_rgb(p, str(p)))) for p in list_image_files(folder)]
        return extractor(torch.stack(images))

    a, b = feats(_faces(tmp_path / "a", 1, 40)), feats(_faces(tmp_path / "b", 2, 40))
    noise = extractor(torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator()
                                    .manual_seed(0)))
    near, _ = kernel_inception_distance(a, b, subsets=10, subset_size=30)
    far, _ = kernel_inception_distance(a, noise, subsets=10, subset_size=30)
    assert far > 10 * max(near, 1e-4)
    assert precision_recall(a, b)[0] > 0.5 and precision_recall(a, noise) == (0.0, 0.0)
