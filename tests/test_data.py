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
        x, y = next(stream)
        assert y.dtype == torch.int64 and y.tolist() == [i % 7 for i in ids(x)]
    state = stream.state_dict()
    expected = [next(stream) for _ in range(3)]
    resumed = BatchStream(Indexed(40), 8, seed=3, labels=labels, rank=1, world_size=2)
    resumed.load_state_dict(state)
    for want_x, want_y in expected:
        got_x, got_y = next(resumed)
        assert torch.equal(got_x, want_x) and torch.equal(got_y, want_y)
    assert [ids(next(BatchStream(Indexed(40), 8, seed=3))) for _ in range(2)] == \
        [ids(next(BatchStream(Indexed(40), 8, seed=3, labels=labels))[0]) for _ in range(2)]  # same order either way


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
