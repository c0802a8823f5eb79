"""sample.py: G rebuilt from the checkpoint alone; per-seed determinism at any batch size; attention switching."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from biggan.config import to_dict
from biggan.checkpoint import FORMAT_VERSION, save_checkpoint
from biggan.models import attention_gammas, build_generator, set_attention
from biggan.generation.attention import attention_overrides
from biggan.generation.checkpoint import load_generator
from biggan.generation.generate import generate
from biggan.generation.latents import interpolation_latents, latents_for_seeds, parse_seeds
from biggan.images import to_uint8

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def smyrf_checkpoint(tmp_path_factory, tiny_config) -> Path:
    """A checkpoint of a SMYRF-attention G (demo placement, ch 8) with gamma != 0, so attention changes the output."""
    tmp = tmp_path_factory.mktemp("ckpt")
    cfg = tiny_config(tmp, 7)
    torch.manual_seed(0)
    G = build_generator(cfg.model)
    with torch.no_grad():
        for gamma in attention_gammas(G).values():
            gamma.fill_(2.0)
    G_ema = build_generator(cfg.model)  # different weights: tells G and G_ema apart
    state = {"format_version": FORMAT_VERSION, "config": to_dict(cfg), "model_args": to_dict(cfg.model), "step": 7,
             "G": G.state_dict(), "G_ema": G.state_dict(), "D": {}, "opt_G": {}, "opt_D": {}, "images_seen": 0,
             "best_fid": None, "rng": {}, "data": {}, "attention_rng": {}}
    state["G"] = G_ema.state_dict()
    return save_checkpoint(state, tmp, step=7, keep_last=1)


def test_parse_seeds():
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    assert parse_seeds("5") == [5]
    from biggan.errors import UserError

    for bad in ("3-1", "a", "-2", ""):
        with pytest.raises(UserError):
            parse_seeds(bad)


def test_latents_depend_only_on_the_seed():
    z = latents_for_seeds([0, 1, 2, 3], 16)
    assert torch.equal(latents_for_seeds([2], 16)[0], z[2])
    assert torch.equal(latents_for_seeds([3, 0], 16, z_scale=0.5), 0.5 * z[[3, 0]])


def test_images_identical_across_batch_sizes_and_runs(smyrf_checkpoint):
    G, cfg, info = load_generator(smyrf_checkpoint)
    assert info["network"] == "G_ema" and info["step"] == 7 and not G.training
    z = latents_for_seeds(list(range(6)), cfg.dim_z)
    x_one = generate(G, z, batch_size=1, device="cpu")
    x_all = generate(G, z, batch_size=6, device="cpu")
    x_again = generate(G, z, batch_size=4, device="cpu")
    assert x_all.shape == (6, 3, 32, 32)
    # Same batch size: bitwise. Other batch sizes: CPU conv/GEMM kernels block differently, so floats agree to ~1e-6
    # and the saved 8-bit images to within one level (a value exactly at a rounding boundary).
    assert torch.equal(generate(G, z, batch_size=6, device="cpu"), x_all)
    for other in (x_one, x_again):
        assert torch.allclose(other, x_all, atol=2e-5, rtol=0)
        assert (to_uint8(other).int() - to_uint8(x_all).int()).abs().max() <= 1
    subset = generate(G, latents_for_seeds([4, 1], cfg.dim_z), batch_size=2, device="cpu")
    assert torch.allclose(subset, x_all[[4, 1]], atol=2e-5, rtol=0)


def test_dense_attention_on_a_smyrf_checkpoint(smyrf_checkpoint):
    G, cfg, _ = load_generator(smyrf_checkpoint)
    z = latents_for_seeds([0, 1, 2], cfg.dim_z)
    x_smyrf = generate(G, z, 3, "cpu")

    set_attention(G, attention_overrides(cfg, "dense"))
    x_dense = generate(G, z, 3, "cpu")
    assert torch.isfinite(x_dense).all() and not torch.allclose(x_dense, x_smyrf)
    # One hash round and one cluster holding every query and key is exactly dense attention.
    set_attention(G, attention_overrides(cfg, "smyrf", n_hashes=1, q_cluster_size=1024, k_cluster_size=256))
    x_one_cluster = generate(G, z, 3, "cpu")
    assert torch.allclose(x_one_cluster, x_dense, atol=1e-5)


def test_attention_override_errors(smyrf_checkpoint):
    from biggan.errors import ConfigError

    _, cfg, _ = load_generator(smyrf_checkpoint)
    with pytest.raises(ConfigError, match="act only with --attention smyrf"):
        attention_overrides(cfg, "dense", n_hashes=2)


def test_interpolation_latents():
    z = torch.randn(3, 4)
    path = interpolation_latents(z, 5)
    assert path.shape == (10, 4)
    assert torch.equal(path[0], z[0]) and torch.allclose(path[4], z[1]) and torch.allclose(path[9], z[2])


def _sample_main(monkeypatch, *args: str) -> int:
    """Run sample.py's main in-process (the CLI wrapper, exit status included) with ``args``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sample_cli", ROOT / "sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["sample.py", *args])
    from biggan.errors import cli_main

    with pytest.raises(SystemExit) as info:
        cli_main(module.main)
    return info.value.code


def test_cli_grid_outdir_and_dense(smyrf_checkpoint, tmp_path, monkeypatch, capsys):
    ckpt = str(smyrf_checkpoint)
    assert _sample_main(monkeypatch, ckpt, "--seeds", "0-3", "--grid", str(tmp_path / "grid.png"),
                        "--outdir", str(tmp_path / "b1"), "--batch-size", "1") == 0
    assert Image.open(tmp_path / "grid.png").size == (2 + 2 * 34, 2 + 2 * 34)  # 2x2 grid of 32 px, 2 px padding
    assert sorted(p.name for p in (tmp_path / "b1").iterdir()) == [f"seed000{i}.png" for i in range(4)]
    assert _sample_main(monkeypatch, ckpt, "--seeds", "3", "--outdir", str(tmp_path / "b3")) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b1" / "seed0003.png")),
                          np.asarray(Image.open(tmp_path / "b3" / "seed0003.png")))
    assert _sample_main(monkeypatch, ckpt, "--seeds", "0,2", "--interpolate", "--steps", "3", "--attention", "dense",
                        "--grid", str(tmp_path / "lerp.png")) == 0
    assert Image.open(tmp_path / "lerp.png").size == (2 + 3 * 34, 2 + 34)  # one path of 3 frames
    capsys.readouterr()
    assert _sample_main(monkeypatch, str(tmp_path / "missing.pt"), "--grid", str(tmp_path / "x.png")) == 2
    assert capsys.readouterr().err.startswith("error: no checkpoint at")


@pytest.mark.slow
def test_cli_subprocess(smyrf_checkpoint, tmp_path):
    result = subprocess.run(
        [sys.executable, "sample.py", str(smyrf_checkpoint), "--seeds", "0-1", "--grid", str(tmp_path / "g.png")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "2 images from G_ema at step 7" in result.stdout and (tmp_path / "g.png").is_file()


# --- truncation trick ---------------------------------------------------------------------------------------------------

def test_truncation_trick_is_a_truncated_normal_per_seed():
    from scipy.stats import truncnorm

    z = latents_for_seeds(list(range(2000)), 64, truncate_at=1.0)  # (2000, 64)
    assert z.abs().max() <= 1.0 and z.abs().max() > 0.99
    assert abs(z.std().item() - truncnorm.std(-1, 1)) < 0.005  # 0.5379 (a clamped normal would give 0.7 with atoms)
    assert (z.abs() > 0.999).float().mean() < 0.002  # resampled, not clamped: no mass piles up at +-t
    again = latents_for_seeds([5, 1999, 0], 64, truncate_at=1.0)
    assert torch.equal(again, z[[5, 1999, 0]])  # image i depends only on seed i
    assert torch.equal(latents_for_seeds([7], 64, z_scale=0.5, truncate_at=2.0), 0.5 * latents_for_seeds([7], 64,
                                                                                                       truncate_at=2.0))
    plain = latents_for_seeds([7], 64)
    assert not torch.equal(latents_for_seeds([7], 64, truncate_at=2.0), plain)


# --- class-conditional sampling ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def class_checkpoint(tmp_path_factory, tiny_config) -> Path:
    """A class-conditional G (3 classes with names, ch 8, 32 px; shared embedding rows apart so classes differ)."""
    tmp = tmp_path_factory.mktemp("class_ckpt")
    cfg = tiny_config(tmp, 1, "model.conditioning=class", "model.n_classes=3", "model.shared_dim=8")
    torch.manual_seed(0)
    G = build_generator(cfg.model)
    with torch.no_grad():
        G.shared.weight.mul_(20)
    state = {"format_version": FORMAT_VERSION, "config": to_dict(cfg), "model_args": to_dict(cfg.model), "step": 3,
             "G": G.state_dict(), "G_ema": G.state_dict(), "class_names": ["cat", "dog", "owl"]}
    return save_checkpoint(state, tmp, step=3, keep_last=1)


def test_class_sampling_cli(class_checkpoint, smyrf_checkpoint, tmp_path, monkeypatch, capsys):
    ckpt = str(class_checkpoint)
    assert _sample_main(monkeypatch, ckpt, "--classes", "0-2", "--seeds", "3,4", "--grid", str(tmp_path / "rows.png"),
                        "--outdir", str(tmp_path / "rows"), "--batch-size", "1", "--truncation-trick", "1.5") == 0
    grid = Image.open(tmp_path / "rows.png")
    assert grid.size == (2 + 2 * 34, 2 + 3 * 34)  # 3 class rows x 2 seed columns
    assert grid.text["classes"] == "0 (cat), 1 (dog), 2 (owl)" and grid.text["truncation_trick"] == "1.5"
    assert "truncated to [-1.5, 1.5]" in grid.text["z"] and grid.text["z_scale"] == "1"
    files = sorted(p.name for p in (tmp_path / "rows").iterdir())
    assert files == [f"class{c:04d}-seed{s:04d}.png" for c in range(3) for s in (3, 4)]
    one = Image.open(tmp_path / "rows" / "class0001-seed0004.png")
    assert one.text["seed"] == "4" and one.text["class"] == "1 (dog)" and one.text["network"] == "G_ema"
    rows = {c: np.asarray(Image.open(tmp_path / "rows" / f"class{c:04d}-seed0004.png")) for c in range(3)}
    assert not np.array_equal(rows[0], rows[1])  # the class changes the image

    # --class by name: the same image as that class's row (same seed, same batch size)
    assert _sample_main(monkeypatch, ckpt, "--class", "dog", "--seeds", "4", "--outdir", str(tmp_path / "one"),
                        "--batch-size", "1", "--truncation-trick", "1.5") == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "one" / "class0001-seed0004.png")), rows[1])

    capsys.readouterr()
    assert _sample_main(monkeypatch, ckpt, "--list-classes") == 0
    assert capsys.readouterr().out.splitlines()[:2] == ["3 classes", "0 (cat)"]
    for argv, words in (([ckpt, "--grid", "g.png"], "class-conditional"),
                        ([ckpt, "--class", "7", "--grid", "g.png"], "0-2"),
                        ([ckpt, "--class", "bat", "--grid", "g.png"], "--list-classes"),
                        ([ckpt, "--classes", "0-1", "--interpolate", "--grid", "g.png"], "--class C"),
                        ([str(smyrf_checkpoint), "--class", "1", "--grid", "g.png"], "unconditional"),
                        ([ckpt, "--class", "1", "--truncation-trick", "0", "--grid", "g.png"], "--truncation-trick")):
        assert _sample_main(monkeypatch, *argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and len(err.strip().splitlines()) == 1, err


def test_unconditional_png_metadata_and_the_old_truncation_name(smyrf_checkpoint, tmp_path, monkeypatch):
    assert _sample_main(monkeypatch, str(smyrf_checkpoint), "--seeds", "0-1", "--truncation", "0.7",
                        "--grid", str(tmp_path / "g.png"), "--outdir", str(tmp_path / "o")) == 0
    text = Image.open(tmp_path / "g.png").text
    assert text["z"] == "N(0, I) times 0.7 (z scale)" and text["truncation_trick"] == "off"
    assert text["seeds"] == "0-1" and "smyrf" in text["attention"] and text["step"] == "7"
    assert Image.open(tmp_path / "o" / "seed0001.png").text["seed"] == "1"
