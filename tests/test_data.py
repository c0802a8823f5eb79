"""Datasets and the batch stream: demo faces, prepared memmaps, raw folders, determinism, sharding, resume, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from biggan.data import BatchStream, DataConfig, FolderDataset, PreparedDataset, build_dataset, ensure_synthetic_dataset
from biggan.data.prepared import ARRAY_FILE, MANIFEST_FILE
from biggan.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A small demo dataset (64 faces at 32 px)."""
    root = tmp_path_factory.mktemp("datasets")
    return PreparedDataset(ensure_synthetic_dataset(root, 32, 64, seed=0), 32)


class Indexed:
    """A dataset whose image i is filled with the value i: lets tests read back which images a batch holds."""

    def __init__(self, n: int, res: int = 4):
        self.n, self.res = n, res

    def __len__(self):
        return self.n

    def get_batch(self, indices):
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.uint8)
        return idx[:, None, None, None].expand(-1, 3, self.res, self.res).clone()  # (B, 3, res, res)


def ids(batch: torch.Tensor) -> list[int]:
    return ((batch[:, 0, 0, 0] + 1) * 127.5).round().long().tolist()


# --- demo dataset -----------------------------------------------------------------------------------------------------

def test_synthetic_dataset_is_deterministic_and_reused(tmp_path, demo):
    out = ensure_synthetic_dataset(tmp_path, 32, 64, seed=0)
    assert out == tmp_path / "demo32"
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["sha256"] == demo.manifest["sha256"] and manifest["count"] == 64
    mtime = (out / ARRAY_FILE).stat().st_mtime_ns
    ensure_synthetic_dataset(tmp_path, 32, 64, seed=0)
    assert (out / ARRAY_FILE).stat().st_mtime_ns == mtime  # reused, not rewritten
    ensure_synthetic_dataset(tmp_path, 32, 64, seed=1)  # another seed: regenerated, different images
    assert json.loads((out / MANIFEST_FILE).read_text())["sha256"] != demo.manifest["sha256"]


def test_synthetic_images_are_varied_faces_not_noise(demo):
    x = demo.get_batch(np.arange(64)).float()  # (B, 3, 32, 32)
    assert x.std(dim=0).mean() > 30  # images differ from one another
    neighbours = (x[..., 1:] - x[..., :-1]).abs().mean()
    assert neighbours < 0.3 * (x - x.mean()).abs().mean()  # smooth shapes, unlike noise


# --- prepared dataset -------------------------------------------------------------------------------------------------

def test_prepared_dataset_batches_in_requested_order(demo):
    idx = np.array([5, 1, 5, 63])
    batch = demo.get_batch(idx)
    assert batch.dtype == torch.uint8 and batch.shape == (4, 3, 32, 32)
    for row, i in zip(batch, idx):
        assert torch.equal(row, demo[int(i)])


def test_prepared_dataset_errors(tmp_path, demo):
    with pytest.raises(DataError, match="is 32px but the model is 64px.*--resolution 64"):
        PreparedDataset(demo.root, 64)
    with pytest.raises(DataError, match="does not exist.*prepare_celebahq"):
        PreparedDataset(tmp_path / "missing", 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no valid manifest.json"):
        PreparedDataset(tmp_path / "empty", 32)


def test_build_dataset_kinds(tmp_path, demo):
    synthetic = build_dataset(DataConfig(kind="synthetic", path=str(tmp_path), synthetic_num_images=16), 32)
    assert len(synthetic) == 16 and synthetic.reference_stats_path(192).name == "fid_stats_d192.npz"
    prepared = build_dataset(DataConfig(kind="prepared", path=str(demo.root)), 32)
    assert len(prepared) == 64
    with pytest.raises(ConfigError):
        DataConfig(synthetic_num_images=0).validate()


# --- raw folder -------------------------------------------------------------------------------------------------------

def test_folder_dataset_box_resizes_and_orders_naturally(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for name in ("2.png", "10.png", "sub/1.png"):
        arrays[name] = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(arrays[name]).save(folder / name)
    ds = FolderDataset(folder, 8)
    assert [p.relative_to(folder).as_posix() for p in ds.files] == ["2.png", "10.png", "sub/1.png"]
    expected = np.asarray(Image.fromarray(arrays["10.png"]).resize((8, 8), Image.Resampling.BOX)).transpose(2, 0, 1)
    assert np.array_equal(ds[1].numpy(), expected)
    assert ds.get_batch(np.array([2, 0])).shape == (2, 3, 8, 8)


def test_folder_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        FolderDataset(tmp_path / "nope", 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        FolderDataset(tmp_path / "empty", 8)
    Image.new("RGB", (16, 12)).save(tmp_path / "empty" / "wide.png")
    (tmp_path / "empty" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = FolderDataset(tmp_path / "empty", 8)
    with pytest.raises(DataError, match=r"broken\.jpg"):
        ds[0]
    with pytest.raises(DataError, match=r"wide\.png is 16x12, not square"):
        ds[1]


# --- batch stream -----------------------------------------------------------------------------------------------------

def test_stream_batches_are_images_in_range(demo):
    x = next(BatchStream(demo, 8, seed=0))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.5 and x.max() > 0.5


def test_stream_is_deterministic_per_seed():
    a, b, c = (BatchStream(Indexed(40), 8, seed=s) for s in (3, 3, 4))
    first = [ids(next(a)) for _ in range(12)]
    assert first == [ids(next(b)) for _ in range(12)]
    assert first != [ids(next(c)) for _ in range(12)]


def test_stream_epochs_cover_data_and_ranks_shard_disjointly():
    n, world, bs = 45, 3, 5  # 15 per rank, 3 batches per rank per epoch
    streams = [BatchStream(Indexed(n), bs, seed=0, rank=r, world_size=world) for r in range(world)]
    epochs = []
    for _ in range(2):
        seen = [sum((ids(next(s)) for _ in range(3)), []) for s in streams]
        flat = sum(seen, [])
        assert len(flat) == len(set(flat)) == n  # disjoint shards covering every image once per epoch
        epochs.append(seen)
    assert epochs[0][0] != epochs[1][0]  # a rank's shard changes every epoch


def test_stream_resume_is_bit_identical(demo):
    stream = BatchStream(demo, 16, seed=7, xflip=True)
    for _ in range(5):  # crosses an epoch boundary (4 batches per epoch)
        next(stream)
    state = stream.state_dict()
    expected = [next(stream) for _ in range(6)]
    resumed = BatchStream(demo, 16, seed=7, xflip=True)
    resumed.load_state_dict(state)
    for want in expected:
        assert torch.equal(next(resumed), want)
    assert all(type(v) is int for v in state.values())  # checkpoint-safe plain values


def test_stream_xflip_is_deterministic_and_flips_some(demo):
    plain = next(BatchStream(demo, 32, seed=1))
    flipped = next(BatchStream(demo, 32, seed=1, xflip=True))
    again = next(BatchStream(demo, 32, seed=1, xflip=True))
    assert torch.equal(flipped, again)
    same = [torch.equal(p, f) for p, f in zip(plain, flipped)]
    mirrored = [torch.equal(p.flip(2), f) for p, f in zip(plain, flipped)]
    assert all(s or m for s, m in zip(same, mirrored)) and 5 < sum(mirrored) < 27


def test_stream_errors():
    with pytest.raises(DataError, match="fewer than one batch"):
        BatchStream(Indexed(10), 8, seed=0, world_size=2)
    stream = BatchStream(Indexed(40), 8, seed=0)
    with pytest.raises(DataError, match="num_images 41 -> 40"):
        stream.load_state_dict({**stream.state_dict(), "num_images": 41})
