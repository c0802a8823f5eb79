"""FID: closed forms, streaming statistics, weights handling, eval mode, and equality with pytorch-fid.

Tests that need the real weights file skip only when it is absent outside CI (CI installs it first and must fail).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from biggan.errors import WeightsError
from biggan.fid import (
    FeatureStats,
    FIDConfig,
    default_weights_path,
    fid_of_generator,
    frechet_distance,
    load_extractor,
    load_stats,
    metric_name,
    quantize_uint8,
    save_stats,
)
from biggan.fid.install import _skeleton
from biggan.fid.stats import RefStats

ROOT = Path(__file__).resolve().parents[1]
# pytorch-fid 0.3.0 passes sqrtm(disp=False), deprecated in SciPy 1.17; the routine itself is what we want.
pytestmark = pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")


def real_weights() -> Path:
    path = default_weights_path()
    if not path.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"FID weights missing at {path} in CI; run `python -m biggan.fid install-weights` first")
        pytest.skip(f"FID weights not installed at {path} (python -m biggan.fid install-weights)")
    return path


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    """A structurally valid weights file with random values: for tests about loading, not about features."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "random_inception.pth"
    torch.save(_skeleton().state_dict(), path)
    return path


def _faces(folder: Path, seed: int, count: int, res: int = 32) -> Path:
    from biggan.data.synthetic import render_face

    folder.mkdir(parents=True)
    for i in range(count):
        render_face(np.random.default_rng([seed, i]), res).save(folder / f"{i}.png")
    return folder


# --- formula and statistics -------------------------------------------------------------------------------------------

def test_frechet_distance_closed_form_two_gaussians():
    """Diagonal covariances: ‖μ₁−μ₂‖² + Σ(a + b − 2√(ab))."""
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)
    # Rotating both Gaussians by the same orthogonal matrix changes nothing.
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    got = frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-7)


def test_fid_of_identical_stats_is_zero():
    x = torch.randn(200, 8, dtype=torch.float64)
    stats = FeatureStats(8)
    stats.update(x)
    mu, sigma = stats.mean_cov()
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_streaming_stats_match_numpy_and_merge():
    x = torch.randn(97, 6, dtype=torch.float64) * 3 + 1
    whole, part1, part2 = FeatureStats(6), FeatureStats(6), FeatureStats(6)
    whole.update(x)
    for chunk in x[:40].split(7):
        part1.update(chunk.float())  # any dtype in; float64 inside
    part2.update(x[40:])
    mu, sigma = part1.merge(part2).mean_cov()
    np.testing.assert_allclose(mu, x.numpy().mean(0), rtol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(x.numpy(), rowvar=False), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(whole.mean_cov()[1], np.cov(x.numpy(), rowvar=False), rtol=1e-10)


def test_stats_file_round_trip_is_pytorch_fid_compatible(tmp_path):
    stats = FeatureStats(4)
    stats.update(torch.randn(10, 4))
    path = save_stats(tmp_path / "s.npz", stats, "ext-id")
    with np.load(path) as f:  # what pytorch-fid reads
        np.testing.assert_array_equal(f["mu"], stats.mean_cov()[0])
    ref = load_stats(path)
    assert (ref.n, ref.extractor) == (10, "ext-id") and ref.sigma.shape == (4, 4)


def test_quantize_uint8_as_png():
    x = torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0])
    assert quantize_uint8(x).tolist() == [0, 0, 128, 255, 255, 255]


def test_metric_names():
    assert metric_name(10000, 2048) == "fid10k" and metric_name(50000, 2048) == "fid50k"
    assert FIDConfig(num_samples=1000, dims=192).name == "fid1k_d192"


def test_fid_of_generator_with_stand_in_extractor_and_reduce():
    """Own samples against own stats ≈ 0; a shifted generator is far; reduce sums two 'processes'."""

    class MeanColour(torch.nn.Module):  # tiny stand-in with the extractor interface
        dims, identity = 3, "stand-in"

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, images):
            return images.double().mean(dim=(2, 3))  # (B, 3)

    gen = torch.Generator().manual_seed(0)

    def sample(n, shift=0):
        return (torch.rand(n, 3, 4, 4, generator=gen) * 200 + shift).to(torch.uint8)

    ref_stats = FeatureStats(3)
    for _ in range(20):
        ref_stats.update(MeanColour()(sample(50)))
    ref = RefStats(*ref_stats.mean_cov(), n=1000, extractor="stand-in", path=Path("mem"))
    same = fid_of_generator(sample, 1000, 64, MeanColour(), ref)
    far = fid_of_generator(lambda n: sample(n, 50), 1000, 64, MeanColour(), ref)
    doubled = fid_of_generator(sample, 500, 64, MeanColour(), ref, reduce=lambda t: t * 2)
    assert same < 10 and far > 5000 and doubled < 10  # mean-colour variance ~200 per channel; shift 50 -> 7500


class _StopAtReduce(Exception):
    pass


def test_fid_statistics_are_built_and_reduced_on_the_feature_device():
    """Issue 12 item 1: under DDP on NCCL the packed statistics must be reduced where the features are (the GPU), never
    as a host tensor. A stand-in extractor on the 'meta' device (no GPU needed) stands for the GPU."""
    meta = torch.device("meta")

    class OnDevice(torch.nn.Module):  # extractor interface, features left on feature_device
        dims, identity, feature_device = 3, "stand-in", meta

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1, device=meta))

        def forward(self, images):
            assert images.device == meta  # the fakes arrive on the extractor's device
            return images.float().mean(dim=(2, 3))  # (B, 3) on meta

    seen = []

    def reduce(t):
        seen.append((t.device, t.dtype, tuple(t.shape)))
        raise _StopAtReduce  # meta tensors hold no values: the distance cannot be taken, stop here

    ref = RefStats(np.zeros(3), np.eye(3), n=10, extractor="stand-in", path=Path("mem"))
    with pytest.raises(_StopAtReduce):
        fid_of_generator(lambda n: torch.zeros(n, 3, 4, 4, dtype=torch.uint8, device=meta), 10, 4, OnDevice(), ref,
                         reduce=reduce)
    assert seen == [(meta, torch.float64, (1 + 3 + 9,))]


def test_generate_can_leave_fakes_on_the_device():
    """FID fakes go from G to the extractor without a trip through the host (``to_host=False``)."""
    from biggan.generation.generate import generate

    class G(torch.nn.Module):
        def forward(self, z, y=None):
            return z.reshape(z.shape[0], 3, 1, 1).tanh()  # (B, 3, 1, 1)

    z = torch.zeros(5, 3, device="meta")
    x = generate(G(), z, 2, torch.device("meta"), to_host=False)
    assert x.device.type == "meta" and x.shape == (5, 3, 1, 1) and quantize_uint8(x).device.type == "meta"
    host = generate(G(), torch.zeros(5, 3), 2, torch.device("cpu"))
    assert host.device.type == "cpu" and torch.equal(host, torch.zeros(5, 3, 1, 1))


def test_feature_stats_live_on_their_device():
    stats = FeatureStats(3, device="meta")
    stats.update(torch.zeros(4, 3))  # host features are moved to the statistics' device
    assert stats.sum.device.type == "meta" and stats.sum_outer.dtype == torch.float64 and stats.n == 4


_WITHOUT_PYTORCH_FID = """
import sys
sys.modules["pytorch_fid"] = None  # import blocked: as on a machine without the package
import torch
import biggan.config
from biggan.training.config import load_config
from biggan.models import build_discriminator, build_generator
from smyrf import smyrf_attention

cfg = load_config("configs/demo.yaml")
G, D = build_generator(cfg.model), build_discriminator(cfg.model)
z = torch.randn(2, cfg.model.dim_z)
y = None if cfg.model.conditioning != "class" else torch.zeros(2, dtype=torch.long)
assert D(G(z, y), y).shape == (2,)  # G's SMYRF layer runs in this forward
q, k, v = torch.randn(3, 2, 64, 8).unbind(0)  # (B, N, d) each
assert smyrf_attention(q, k, v, n_hashes=2, q_cluster_size=16, k_cluster_size=16).shape == (2, 64, 8)
assert not any(name.startswith("pytorch_fid.") for name in sys.modules)
from biggan.errors import cli_main
from biggan.fid import load_extractor
cli_main(lambda: load_extractor(None, "cpu", 64))
"""


def test_config_models_and_smyrf_work_without_pytorch_fid_and_fid_says_how_to_get_it():
    """Issue 12 item 4: only an extractor needs pytorch-fid; without it FID is one clear line and exit 2."""
    done = subprocess.run([sys.executable, "-c", _WITHOUT_PYTORCH_FID], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: FID needs the pytorch-fid package"), done.stderr[-2000:]
    assert "pip install pytorch-fid" in lines[0] and "fid.every=0" in lines[0]


# --- weights ----------------------------------------------------------------------------------------------------------

def test_missing_weights_is_one_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="install-weights"):
        load_extractor(tmp_path / "nope.pth")


def test_corrupt_weights_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint" * 100)
    with pytest.raises(WeightsError, match="corrupt.*install-weights"):
        load_extractor(bad)
    foreign = tmp_path / "foreign.pth"
    torch.save({"weight": torch.zeros(3)}, foreign)
    with pytest.raises(WeightsError, match="install-weights"):
        load_extractor(foreign)


def test_loading_never_touches_the_network(random_weights, monkeypatch):
    import pytorch_fid.inception as pfi
    import torch.hub

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(pfi, "load_state_dict_from_url", no_network)
    extractor = load_extractor(random_weights, dims=64)
    assert extractor(torch.zeros(2, 3, 8, 8, dtype=torch.uint8)).shape == (2, 64)


def test_extractor_stays_in_eval_mode(random_weights):
    extractor = load_extractor(random_weights, dims=64)
    extractor.train()
    assert not any(m.training for m in extractor.modules())
    x = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    one, batch = extractor(x[:1]), extractor(x)  # eval BN: an image's features do not depend on its batch
    assert batch.dtype == torch.float64
    torch.testing.assert_close(one[0], batch[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        extractor(x.float())


def test_cli_stats_file_and_folder_agree(tmp_path, random_weights, monkeypatch, capsys):
    """`stats SRC OUT.npz`, then FID(npz, folder) == FID(folder, folder); FID(npz, npz) == 0; dims from the file."""
    from biggan.fid.__main__ import main

    a, b = _faces(tmp_path / "a", 1, 8, res=16), _faces(tmp_path / "b", 2, 8, res=16)

    def cli(*args: str) -> str:
        monkeypatch.setattr(sys, "argv", ["fid", *args])
        assert main() == 0
        return capsys.readouterr().out.strip().splitlines()[-1]

    weights = ("--weights", str(random_weights))
    cli("stats", str(a), str(tmp_path / "a.npz"), "--dims", "64", *weights)
    assert load_stats(tmp_path / "a.npz").n == 8
    from biggan.fid.reference_features import load_features

    features = load_features(tmp_path / "a.features.npz")  # the KID/PR reference of the same pass: all 8 images
    assert features.features.shape == (8, 64) and features.n_total == 8 and features.extractor
    folders = float(cli(str(a), str(b), "--dims", "64", *weights).split()[-1])
    mixed = float(cli(str(tmp_path / "a.npz"), str(b), *weights).split()[-1])  # dims taken from the file
    assert mixed == pytest.approx(folders, rel=1e-6) and folders > 0
    assert abs(float(cli(str(tmp_path / "a.npz"), str(tmp_path / "a.npz")).split()[-1])) < 1e-4


def test_evaluator_computes_reference_once_and_refuses_foreign_stats(tmp_path, random_weights):
    """build_fid_evaluator: dataset stats computed next to the dataset, reused, recomputed for new weights;
    a user-given file made by another extractor is refused."""
    import shutil

    from biggan.data import PreparedDataset, ensure_synthetic_dataset
    from biggan.errors import DataError
    from biggan.fid import build_fid_evaluator

    dataset = PreparedDataset(ensure_synthetic_dataset(tmp_path, 16, 12, seed=0), 16)
    cfg = FIDConfig(every=1, num_samples=12, batch_size=6, dims=64, weights_path=str(random_weights))
    evaluator = build_fid_evaluator(cfg, dataset, "cpu")
    path = dataset.reference_stats_path(64)
    assert evaluator.name == "fid12_d64" and evaluator.ref.path == path and evaluator.ref.n == 12
    assert evaluator.identity["extractor"] == evaluator.extractor.identity
    mtime = path.stat().st_mtime_ns
    build_fid_evaluator(cfg, dataset, "cpu")
    assert path.stat().st_mtime_ns == mtime  # reused
    real_images = iter(dataset.get_batch(np.arange(12)).split(6))
    assert abs(evaluator(lambda n: next(real_images))) < 1e-3  # the dataset against itself

    other = tmp_path / "other.pth"
    shutil.copy(random_weights, other)
    with open(other, "ab") as f:
        f.write(b"\0")  # same tensors, another file: another identity
    cfg_other = FIDConfig(every=1, num_samples=12, batch_size=6, dims=64, weights_path=str(other))
    with pytest.raises(DataError, match="were made by"):
        build_fid_evaluator(FIDConfig(**{**cfg_other.__dict__, "ref_stats": str(path)}), dataset, "cpu")
    build_fid_evaluator(cfg_other, dataset, "cpu")  # the dataset's own file is recomputed instead
    assert load_stats(path).extractor != evaluator.extractor.identity


# --- real network -----------------------------------------------------------------------------------------------------

def test_fid_matches_pytorch_fid_small_dims(tmp_path):
    """Our folder FID == pytorch-fid's (same weights through the hub cache), 64 dims, in-process."""
    real_weights()
    from pytorch_fid.fid_score import calculate_fid_given_paths

    from biggan.fid.__main__ import _folder_stats

    a, b = _faces(tmp_path / "a", 1, 24), _faces(tmp_path / "b", 2, 24)
    theirs = calculate_fid_given_paths([str(a), str(b)], 50, "cpu", 64, 0)
    extractor = load_extractor(None, dims=64)
    ours = frechet_distance(*_folder_stats(a, extractor, 50).mean_cov(), *_folder_stats(b, extractor, 50).mean_cov())
    assert ours == pytest.approx(theirs, rel=1e-3)
    assert ours > 0.1


@pytest.mark.slow
def test_cli_fid_matches_python_m_pytorch_fid_2048(tmp_path):
    """`python -m biggan.fid A B` == `python -m pytorch_fid A B` at 2048 dims, within 1e-3 relative."""
    weights = real_weights()
    a, b = _faces(tmp_path / "a", 1, 10), _faces(tmp_path / "b", 2, 10)  # ~0.2 s/img each way
    env = {**os.environ, "TORCH_HOME": str(weights.parents[2])}  # <TORCH_HOME>/hub/checkpoints/<file>

    def run(module: str) -> float:
        done = subprocess.run([sys.executable, "-m", module, str(a), str(b), "--device", "cpu"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return float(done.stdout.strip().splitlines()[-1].split()[-1])

    ours, theirs = run("biggan.fid"), run("pytorch_fid")
    assert ours == pytest.approx(theirs, rel=1e-3)
    assert ours > 1.0
