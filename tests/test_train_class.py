"""Class-conditional training on labelled data (``model.conditioning: class``): labels reach both steps, grids have a
row per class, FID fakes cover the classes, checkpoints record the class names, a resume is bit-identical, and the
start-up refuses unlabelled data or a wrong class count before any expensive work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from biggan.checkpoint import load_checkpoint
from biggan.data.prepare import prepare_dataset
from biggan.errors import ConfigError, DataError
from biggan.runtime import Runtime
from biggan.training import loop

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

CHANNEL = {"red": 0, "green": 1, "blue": 2}  # a class's images have that channel bright: labels can be read back
CLASSES = sorted(CHANNEL)  # ImageFolder order: blue 0, green 1, red 2


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """A prepared 32 px dataset of 3 classes (8, 6 and 4 images), prepared from class folders."""
    root = tmp_path_factory.mktemp("labelled")
    rng = np.random.default_rng(0)
    for name, count in zip(CLASSES, (8, 6, 4)):
        (root / "src" / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 90, (40, 40, 3), dtype=np.uint8)
            pixels[..., CHANNEL[name]] += 160
            Image.fromarray(pixels).save(root / "src" / name / f"{i}.png")
    prepare_dataset(root / "src", root / "prepared", [32], expect_count=0, labelled=True)
    return root / "prepared" / "32"


def _cfg(tiny_config, tmp, labelled, name, steps, *extra):
    return tiny_config(tmp, steps, f"name={name}", "model.conditioning=class", "model.n_classes=3",
                       "model.shared_dim=8", "data.kind=prepared", f"data.path={labelled}", "log.num_samples=6", *extra)


def _train(cfg, **kwargs) -> dict:
    assert loop.run(cfg, Runtime.setup(cfg.runtime), echo=False, **kwargs) == 0
    return load_checkpoint(Path(cfg.out_dir) / cfg.name / "checkpoints" / "latest.pt")


class _Recorder:
    """Wraps d_step/g_step, keeping the labels (and for D the real images) each call received."""

    def __init__(self, step):
        self.step, self.calls = step, []

    def __call__(self, *args, **kwargs):
        self.calls.append({"y": kwargs.get("y"), "x_real": kwargs.get("x_real")})
        return self.step(*args, **kwargs)


class _FakeFID:
    name, identity = "fid6_fake", {"extractor": "fake", "ref_stats": "none", "ref_n": 0}

    def __call__(self, sample_uint8, reduce=None, world_size=1) -> float:
        images = sample_uint8(6)
        assert images.shape == (6, 3, 32, 32)
        return 1.0


def test_class_conditional_run(tmp_path, tiny_config, labelled, monkeypatch):
    d_rec, g_rec = _Recorder(loop.d_step), _Recorder(loop.g_step)
    monkeypatch.setattr(loop, "d_step", d_rec)
    monkeypatch.setattr(loop, "g_step", g_rec)
    import biggan.fid.evaluate as fid_evaluate

    monkeypatch.setattr(fid_evaluate, "build_fid_evaluator", lambda *a, **k: _FakeFID())
    cfg = _cfg(tiny_config, tmp_path, labelled, "cls", 3, "log.sample_every=3", "fid.every=3")
    state = _train(cfg)
    channel_of = torch.tensor([CHANNEL[name] for name in CLASSES])
    for call in d_rec.calls:  # the real batch's labels are its images' classes
        y, x = call["y"], call["x_real"]
        assert y.dtype == torch.int64 and torch.equal(x.mean(dim=(2, 3)).argmax(1), channel_of[y])
    assert len(d_rec.calls) == 6 and len(g_rec.calls) == 3
    g_labels = torch.cat([c["y"] for c in g_rec.calls])
    assert g_labels.shape == (12,) and 0 <= g_labels.min() and g_labels.max() <= 2
    assert state["class_names"] == CLASSES and state["model_args"]["n_classes"] == 3
    grid = Image.open(Path(cfg.out_dir) / "cls" / "samples" / "G_ema-00000003.png")
    assert grid.size == (2 + 2 * 34, 2 + 3 * 34)  # 3 class rows x (6 // 3) columns of 32 px
    metrics = (Path(cfg.out_dir) / "cls" / "metrics.jsonl").read_text()
    assert '"fake_labels": "data class frequencies"' in metrics


def test_fake_labels_follow_the_class_frequencies(tmp_path, tiny_config, labelled):
    trainer = loop._Trainer.__new__(loop._Trainer)  # only the label draw: no models needed
    trainer.label_table = torch.tensor([0] * 8 + [1] * 6 + [2] * 4)
    y = trainer._fake_labels(18000, torch.Generator().manual_seed(0))
    share = torch.bincount(y, minlength=3).float() / 18000
    assert torch.allclose(share, torch.tensor([8, 6, 4]) / 18, atol=0.01)


@pytest.mark.slow
def test_class_conditional_resume_is_bit_identical(tmp_path, tiny_config, labelled):
    straight = _train(_cfg(tiny_config, tmp_path, labelled, "straight", 4))
    _train(_cfg(tiny_config, tmp_path, labelled, "halves", 2))
    resumed = _train(_cfg(tiny_config, tmp_path, labelled, "halves", 4))
    for key in ("G", "D", "G_ema", "opt_G", "opt_D", "data"):
        a, b = straight[key], resumed[key]
        if isinstance(a, dict) and key in ("G", "D", "G_ema"):
            assert all(torch.equal(a[k], b[k]) for k in a), key
        else:
            assert str(a) == str(b), key


def test_start_up_refuses_unlabelled_data_and_a_wrong_class_count(tmp_path, tiny_config, labelled):
    with pytest.raises(DataError, match="no class labels"):  # the demo faces are never drawn
        _train(tiny_config(tmp_path, 1, "name=nolabels", "model.conditioning=class", "model.n_classes=3",
                           "model.shared_dim=8"))
    assert not (tmp_path / "data").exists()
    with pytest.raises(ConfigError, match="has 3 classes .* model.n_classes=3"):
        _train(_cfg(tiny_config, tmp_path, labelled, "wrong", 1, "model.n_classes=5"))
    # one class on unlabelled data: every image is class 0 (the fine-tuning start for faces)
    state = _train(tiny_config(tmp_path, 1, "name=one", "model.conditioning=class", "model.n_classes=1",
                               "model.shared_dim=8"))
    assert state["class_names"] == ["all images"]
