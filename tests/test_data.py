"""Datasets and the batch stream: demo faces, prepared memmaps, raw folders, determinism, sharding, resume, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from biggan.data import (
    BatchStream,
    DataConfig,
    FolderDataset,
    HostBatch,
    PreparedDataset,
    build_dataset,
    ensure_synthetic_dataset,
    model_input,
)
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


def ids(batch: HostBatch | torch.Tensor) -> list[int]:
    """Which images of :class:`Indexed` a host batch (uint8) or a model-input batch (float in [-1, 1]) holds."""
    x = batch.images if isinstance(batch, HostBatch) else batch
    if x.dtype == torch.uint8:
        return x[:, 0, 0, 0].long().tolist()
    return ((x[:, 0, 0, 0] + 1) * 127.5).round().long().tolist()


def same(a: HostBatch, b: HostBatch) -> bool:
    return all((u is None and v is None) or torch.equal(u, v) for u, v in zip(a, b))


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


def test_folder_workers_decode_the_same_batch_in_order(tmp_path):
    """Decoding in worker processes (data.workers) gives the serial decode's batch, in the indices' order; a bad file
    still raises its DataError, naming it, in the caller."""
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    serial, pooled = FolderDataset(tmp_path, 8), FolderDataset(tmp_path, 8, workers=2)
    indices = np.array([5, 0, 3, 3, 1, 4, 2])
    try:
        assert torch.equal(pooled.get_batch(indices), serial.get_batch(indices))
        (tmp_path / "0.png").write_bytes(b"not a png")
        with pytest.raises(DataError, match=r"0\.png"):
            pooled.get_batch(indices)
    finally:
        pooled.close()
    assert pooled._pool is None


# --- batch stream -----------------------------------------------------------------------------------------------------

def test_stream_batches_are_images_in_range(demo):
    batch = next(BatchStream(demo, 8, seed=0))
    assert batch.images.shape == (8, 3, 32, 32) and batch.images.dtype == torch.uint8
    assert batch.flip is None and batch.labels is None  # no data.xflip, no labels
    x = model_input(batch.images, batch.flip)
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
        assert same(next(resumed), want)
    assert all(type(v) is int for v in state.values())  # checkpoint-safe plain values


def test_stream_xflip_is_deterministic_and_flips_some(demo):
    streams = (BatchStream(demo, 32, seed=1, xflip=x) for x in (False, True, True))
    plain, flipped, again = (model_input(*next(stream)[:2]) for stream in streams)
    assert torch.equal(flipped, again)
    same = [torch.equal(p, f) for p, f in zip(plain, flipped)]
    mirrored = [torch.equal(p.flip(2), f) for p, f in zip(plain, flipped)]
    assert all(s or m for s, m in zip(same, mirrored)) and 5 < sum(mirrored) < 27


def test_model_input_is_the_former_host_formula_bit_for_bit():
    """Normalisation and flip moved to the device as one function: the values are those of the old host path."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 8, 8), generator=g, dtype=torch.uint8)  # (B, 3, h, w), every value
    images[0] = torch.arange(192, dtype=torch.uint8).reshape(3, 8, 8)
    images[1] = torch.arange(64, 256, dtype=torch.uint8).reshape(3, 8, 8)
    flip = torch.rand(16, generator=g) < 0.5  # (B,)
    old = images.float() / 127.5 - 1.0  # the former BatchStream.__next__
    old_flipped = torch.where(flip[:, None, None, None], old.flip(3), old)
    assert torch.equal(model_input(images), old)
    assert torch.equal(model_input(images, flip), old_flipped)
    assert model_input(images).min() == -1.0 and model_input(images[1:2]).max() == 1.0


def test_stream_fork_and_skip_follow_the_same_batches(demo):
    stream = BatchStream(demo, 16, seed=5, xflip=True)
    next(stream)
    fork = stream.fork()
    ahead = [next(fork) for _ in range(6)]  # crosses an epoch (4 batches per epoch)
    for want in ahead[:3]:
        assert same(next(stream), want)
    for _ in ahead[3:]:
        stream.skip()  # the consumed cursor of a read-ahead: no batch read, the same place
    assert stream.state_dict() == fork.state_dict() and (stream.epoch, stream.position) == (1, 3)
    assert same(next(stream), next(fork))


def test_stream_errors():
    with pytest.raises(DataError, match="fewer than one batch"):
        BatchStream(Indexed(10), 8, seed=0, world_size=2)
    stream = BatchStream(Indexed(40), 8, seed=0)
    with pytest.raises(DataError, match="num_images 41 -> 40"):
        stream.load_state_dict({**stream.state_dict(), "num_images": 41})


# --- class labels -----------------------------------------------------------------------------------------------------

def _class_tree(root, layout: dict[str, list[str]]):
    """Images at ``root/<class>/<name>`` (names may hold sub-folders)."""
    rng = np.random.default_rng(3)
    for cls, names in layout.items():
        for name in names:
            path = root / cls / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    return root


def test_labelled_folder_follows_torchvision_imagefolder(tmp_path):
    from torchvision.datasets import ImageFolder

    root = _class_tree(tmp_path / "pets", {"dog": ["b.png", "a.png", "deep/10.png", "deep/2.png"], "cat": ["z.jpg"],
                                           "Owl": ["x.png", "x.bmp"]})
    (root / "cat" / "notes.txt").write_text("not an image")
    ds = FolderDataset(root, 8, labelled=True)
    reference = ImageFolder(str(root))
    assert ds.class_labels.names == reference.classes == ["Owl", "cat", "dog"]  # sorted, case-sensitive
    assert [str(p) for p in ds.files] == [path for path, _ in reference.samples]
    assert ds.class_labels.labels.tolist() == reference.targets
    assert ds.class_labels.counts().tolist() == [2, 1, 4]
    assert FolderDataset(root, 8).class_labels is None  # unlabelled: today's natural-order listing, no labels
    assert ds.get_batch(np.array([0, 6])).shape == (2, 3, 8, 8)


@pytest.mark.parametrize("mistake, message", [
    ("loose", "holds images directly"), ("hidden", "hidden folder"), ("empty", "no valid file"),
    ("flat", "no class sub-folders")])
def test_labelled_folder_mistakes_are_one_clear_error(tmp_path, mistake, message):
    root = _class_tree(tmp_path / "data", {"a": ["1.png"], "b": ["2.png"]})
    if mistake == "loose":
        Image.new("RGB", (16, 16)).save(root / "stray.png")
    elif mistake == "hidden":
        _class_tree(root, {".ipynb_checkpoints": ["3.png"]})
    elif mistake == "empty":
        (root / "c").mkdir()
    else:
        root = tmp_path / "flat"
        _class_tree(tmp_path, {"flat": ["1.png", "2.png"]})
    with pytest.raises(DataError, match=message):
        FolderDataset(root, 8, labelled=True)


def test_stream_labels_follow_the_images_and_resume(tmp_path):
    labels = np.arange(40, dtype=np.int64) % 7  # image i has class i % 7
    stream = BatchStream(Indexed(40), 8, seed=3, labels=labels, rank=1, world_size=2)
    for _ in range(4):  # crosses an epoch (2 batches per rank per epoch)
        batch = next(stream)
        assert batch.labels.dtype == torch.int64 and batch.labels.tolist() == [i % 7 for i in ids(batch)]
    state = stream.state_dict()
    expected = [next(stream) for _ in range(3)]
    resumed = BatchStream(Indexed(40), 8, seed=3, labels=labels, rank=1, world_size=2)
    resumed.load_state_dict(state)
    for want in expected:
        assert same(next(resumed), want)
    assert [ids(next(BatchStream(Indexed(40), 8, seed=3))) for _ in range(2)] == \
        [ids(next(BatchStream(Indexed(40), 8, seed=3, labels=labels))) for _ in range(2)]  # same order either way


def test_labels_for_run(tmp_path, demo):
    from biggan.data import labels_for_run

    root = _class_tree(tmp_path / "data", {"a": ["1.png", "2.png"], "b": ["3.png"]})
    labelled = build_dataset(DataConfig(kind="folder", path=str(root)), 8, n_classes=2)
    assert labels_for_run(labelled, 2, "data").labels.tolist() == [0, 0, 1]
    with pytest.raises(ConfigError, match="has 2 classes .* model.n_classes=2"):
        labels_for_run(labelled, 5, "data")
    one = labels_for_run(demo, 1, "demo")  # no labels, one class: every image class 0
    assert one.labels.shape == (64,) and not one.labels.any()
    with pytest.raises(DataError, match="no class labels.*--labels"):
        labels_for_run(demo, 3, "demo")
    with pytest.raises(DataError, match="demo dataset"):  # refused before the demo faces are drawn
        build_dataset(DataConfig(kind="synthetic", path=str(tmp_path / "never")), 32, n_classes=3)
    assert not (tmp_path / "never").exists()
